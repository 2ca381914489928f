/* Softmax fused loss+gradient kernels: cross-entropy and softmax+MSE.
 *
 * Mirrors softmax_rows in fastloss/reference.py, one row at a time:
 *   pass 1  NaN check, max m and first argmax (reads z);
 *   pass 2  e_k = exp(z_k - m) into a float64 row buffer, S' = sum of e over
 *           all but the argmax, and the target terms of the loss (last read
 *           of z: grad may be z itself);
 *   pass 3  gradient from the buffer.
 * softmax_mse (fl_smse_row) stores one value per class tagged by the near
 * set (expm1(z - m) near the max, e elsewhere) and sums over N and F
 * instead; plain rows need no loss pass.
 * Rows are independent, so threads split rows and results never depend on
 * the thread count.  fl_softmax_impl.h instantiates float32 and float64.
 */
#include "fastloss.h"
#include "fl_math.h"
#include "fl_parallel.h"

#include <stdlib.h>

#define FL_ROW_MIN_PER_THREAD 65536  /* elements per thread before threads pay off */
#define FL_SMALL_C 32  /* plain rows (either op) up to this long go by blocks, class-major */
#define FL_F32_ROW_MIN 32  /* float32 exp path from this row length: shorter rows pay its extra loops */
#define FL_RB 256      /* rows per short-row block: its copy (<= 32 KiB float64) stays in L1/L2 */

/* per-row doubles of a short-row block: rows of FL_RB in one array */
enum { FL_SF_ZY, FL_SF_S, FL_SF_RS, FL_SF_Q, FL_SF_SN, FL_SF_EF, FL_SF_SEE, FL_SF_E2F, FL_SF_PM, FL_SF_SNN,
       FL_SF_B, FL_SF_A, FL_SF_VF, FL_SF_VNF, FL_SF_GY, FL_SF_N };

typedef struct {
    const void *z, *probs, *w;
    const int64_t *labels;
    int64_t R, C, ignore_index;
    double smoothing;
    void *g;
    double *loss;
    double scale;
    int op_mse;  /* 0: cross-entropy, 1: softmax_mse */
} fl_sm_ctx;

/* Target entry t_k: probability (or label indicator) smoothed as in the
 * reference: t (1 - eps) + eps / C (exactly t when eps = 0). */
FL_INLINE double fl_target(double t, double keep, double spread) { return t * keep + spread; }

/* a (z - m) for one loss term.  z - m overflows to -inf for finite z when
 * |z|, |m| ~ 1e308 (float64): then 2 a (z/2 - m/2).  A +inf row has z - m
 * = 0 on its +inf entries and -inf elsewhere. */
FL_INLINE double fl_target_term(double a, double z, double m)
{
    double sh = m == __builtin_inf() ? (z == m ? 0.0 : -__builtin_inf()) : z - m;
    int huge = sh == -__builtin_inf() && z > -__builtin_inf() && m < __builtin_inf();
    return huge ? 2.0 * fl_mul0(a, 0.5 * z - 0.5 * m) : fl_mul0(a, sh);
}

/* Row constants of softmax_mse (see fl_softmax_kern.h), N the near set, F
 * the rest, e = 1 + E on N: S = sum e; S1 = S' = S - 1 (the sum over all
 * but the argmax, never formed as a difference); pm = p_max = 1/S; rs = p
 * per stored e (float32 rows store e 2^100); sN = sum_N e; Q = sum_F p;
 * W, B, A = sum_N w e, w e E, w t e (the p_max factor of sum_N p w, p w E,
 * p w t left out, so a lone near class, e = 1, has the same bits in every
 * product: no rounding for an FMA to expose); WT, BT = sum_N w t, w t E;
 * VF, VN = sum_F p u, sum_N p u. */
typedef struct {
    double S, S1, pm, rs, sN, Q, W, B, A, WT, BT, VF, VN, sc;
} fl_smse_k;

/* S, S1, pm, rs, sN, Q and the unweighted W = sN, B = sum_N e E from the
 * row sums of fl_near_sums (s[0], s[1] times esc, s[2], s[3] times esc^2).
 * The argmax puts exactly esc into s[0], so s[0] - esc is exact for a lone
 * near class and >= 0.7 esc otherwise. */
FL_INLINE void fl_smse_consts(fl_smse_k *K, const double *s, double esc, double sc)
{
    double Ss = s[0] + s[1];  /* S esc */
    K->rs = 1.0 / Ss;         /* the one division; the esc scalings are exact */
    K->S = Ss * (1.0 / esc);
    K->S1 = ((s[0] - esc) + s[1]) * (1.0 / esc);
    K->pm = K->rs * esc;
    K->sN = s[0] * (1.0 / esc);
    K->Q = s[1] * K->rs;  /* 1 - P, never formed as a difference */
    K->W = K->sN;
    K->B = s[2] * (1.0 / (esc * esc));
    K->sc = sc;
}

/* p of an entry from e esc: float32 rows one product (the extra rounding is
 * far below float32's), float64 rows a division */
FL_INLINE double fl_smse_p(double ev, const fl_smse_k *K, int f32) { return f32 ? ev * K->rs : ev / K->S; }

/* d = p - t of an entry; on N with t >= 1/2, (1 - t) - (S' - E)/S: 1 - p as
 * two terms >= 0 (E <= 0), so a hard or heavy target keeps the digits p - t
 * would round off ([0, -40], label 0) */
FL_INLINE double fl_smse_d(int near, double p, double E, double t, const fl_smse_k *K)
{
    return near && t >= 0.5 ? (1.0 - t) - (K->S1 - E) * K->pm : p - t;
}

/* dl/dz_j scale = 2 p_j G_j scale.  reference.py's G_j on N, with P = sum_N
 * p = p_max sN and p_max taken out of W, B, A:
 *   G_j = p_max (p_max ((w_j sN - W) + (w_j E_j sN - B)) - (w_j t_j sN - A)) + (Q u_j - VF)
 * (w_j sN - W := 0 without weights), and off N G_j = u_j - (VN + VF).
 * has_w: a constant after inlining. */
FL_INLINE double fl_smse_g(int near, double p, double E, double t, double wk, const fl_smse_k *K, int has_w)
{
    double u = wk * fl_smse_d(near, p, E, t, K);
    double a = (wk * E) * K->sN - K->B;
    if (has_w)
        a = (wk * K->sN - K->W) + a;
    double G = near ? K->pm * (K->pm * a - ((wk * t) * K->sN - K->A)) + (K->Q * u - K->VF) : u - (K->VN + K->VF);
    return (2.0 * p * G) * K->sc;
}

/* VN = sum_N p u = p_max (p_max ((W - WT sN) + (B - BT sN)) - A Q) (sum p =
 * 1 used on A: a label in N, [x, x, -10] label 1, would make p^2 - p (1 -
 * p) cancel to p Q); W - WT sN := sN (1 - WT) without weights */
FL_INLINE void fl_smse_vn(fl_smse_k *K, int has_w)
{
    double wp = has_w ? K->W - K->WT * K->sN : K->sN * (1.0 - K->WT);
    K->VN = K->pm * (K->pm * (wp + (K->B - K->BT * K->sN)) - K->A * K->Q);
}

/* A plain row (one-hot label y, w = 1): A, WT, BT, VF and VN from the row
 * sums and xy (y's tagged value); returns the loss and puts y's gradient
 * entry in *gy.  With sum_N e^2 = sum_N e + sum_N e E (no cancellation,
 * |E| <= 0.35) and p_y, d_y as in fl_smse_g:
 *   y in N:  l = sum_{k != y} p_k^2 + d_y^2 (sum_N e^2 - e_y^2 is exactly 0
 *            when y is the lone near class, within 3x of its terms else)
 *   y in F:  l = sum p^2 + (1 - 2 p_y)  (p_y < 1/2: no cancellation) */
FL_INLINE double fl_smse_plain(fl_smse_k *K, const double *s, double xy, double esc, int f32, double *gy)
{
    int yn = fl_is_near(xy);
    double ey = yn ? esc - xy : -xy;
    double Ey = -xy * (1.0 / esc);
    double py = fl_smse_p(ey, K, f32);
    double e2N = s[0] * esc + s[2];
    double rs2 = K->rs * K->rs;  /* 1 / (S esc)^2 */
    double P2F = s[3] * rs2;     /* sum_F p^2 */
    K->A = yn ? ey * (1.0 / esc) : 0.0;
    K->WT = yn ? 1.0 : 0.0;
    K->BT = yn ? Ey : 0.0;
    K->VF = yn ? P2F : P2F - py;
    fl_smse_vn(K, 0);
    double l;
    if (yn) {
        double dy = fl_smse_d(1, py, Ey, 1.0, K);
        l = (s[3] + (e2N - ey * ey)) * rs2 + dy * dy;
    } else {
        l = (s[3] + e2N) * rs2 + (1.0 - 2.0 * py);
    }
    *gy = fl_smse_g(yn, py, Ey, 1.0, 1.0, K, 0);
    return l;
}

#define FL_TS_BLOCK 1024  /* softmax_mse row sums: block partials, added pairwise */
#define FL_SM_NSUM 8      /* softmax_mse: at most 8 arrays of block partials */

/* Doubles of row work buffer: e; softmax_mse adds its block partials,
 * cross-entropy with smoothing or probabilities the scratch of its pairwise
 * target sums (fl_target_dot). */
FL_INLINE int64_t fl_row_buf_len(const fl_sm_ctx *c)
{
    /* softmax_mse: the tagged values, then arrays of block partials (up to
     * FL_SM_NSUM sums of FL_TS_BLOCK entries, then 2 of 64) */
    if (c->op_mse)
        return c->C + FL_SM_NSUM * ((c->C + 63) / 64);
    return c->probs != NULL || c->smoothing != 0.0 ? 2 * c->C : c->C;
}

/* The reduced loss: the row losses summed after every row is done, in
 * blocks of 1024 rows (fl_sum's fixed order) added in order, so its bits
 * depend on loss only, not on threads or paths (it saves the caller
 * NumPy's ~0.9 us reduce on small calls). */
static double fl_rows_total(const double *loss, int64_t R)
{
    double total = 0.0;
    for (int64_t b0 = 0; b0 < R; b0 += 1024)
        total += fl_sum(loss + b0, R - b0 < 1024 ? R - b0 : 1024);
    return total;
}

/* FL_IT: the signed integer of T's width, for the order-preserving keys
 * of the max pass (see fl_softmax_kern.h) */
#define T float
#define SFX f32
#define FL_IT int32_t
#define FL_IT_MIN INT32_MIN
#define FL_IT_SHIFT 31
#define FL_IT_MAG INT32_C(0x7fffffff)
#define FL_EBT float   /* softmax_mse row buffer: float32 rows keep e 2^100 in float */
#define FL_ESC 0x1p100
#include "fl_softmax_impl.h"
#undef T
#undef SFX
#undef FL_IT
#undef FL_IT_MIN
#undef FL_IT_SHIFT
#undef FL_IT_MAG
#undef FL_EBT
#undef FL_ESC

#define T double
#define SFX f64
#define FL_IT int64_t
#define FL_IT_MIN INT64_MIN
#define FL_IT_SHIFT 63
#define FL_IT_MAG INT64_C(0x7fffffffffffffff)
#define FL_EBT double
#define FL_ESC 1.0
#include "fl_softmax_impl.h"
#undef T
#undef SFX
#undef FL_IT
#undef FL_IT_MIN
#undef FL_IT_SHIFT
#undef FL_IT_MAG
#undef FL_EBT
#undef FL_ESC
