/* Softmax fused loss+gradient kernels: cross-entropy and softmax+MSE.
 *
 * Mirrors softmax_rows in fastloss/reference.py, one row at a time:
 *   pass 1  NaN check, max m and first argmax (reads z);
 *   pass 2  e_k = exp(z_k - m) into a float64 row buffer, S' = sum of e over
 *           all but the argmax, and the target terms of the loss (last read
 *           of z: grad may be z itself);
 *   pass 3  gradient from the buffer.
 * softmax_mse (fl_smse_row) stores e tagged by the tie with the max and
 * sums e and e^2 off the tied set instead; plain rows need no loss pass.
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
enum { FL_SF_ZY, FL_SF_S, FL_SF_RS, FL_SF_TAU, FL_SF_EREST, FL_SF_E2, FL_SF_Q, FL_SF_PM, FL_SF_V, FL_SF_UT,
       FL_SF_GT, FL_SF_GY, FL_SF_N };

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

/* Row constants of softmax_mse (see fl_softmax_kern.h): tau = |T|, the
 * tied classes; S = sum e; p_max = 1/S; rs = p per stored e (float32 rows
 * store e 2^100); Q = sum_{not T} p; V = sum_{not T} p u; W_T, WT_T = sum_T
 * w, sum_T w t; U_T = sum_T w (p_max - t); one: tau == 1. */
typedef struct {
    double tau, S, pm, rs, Q, V, W_T, WT_T, U_T, sc;
    int one;
} fl_smse_k;

/* d = p - t of an entry; a lone max (tau == 1) takes (1 - t) - Q, exact
 * when p_max rounds to 1 */
FL_INLINE double fl_smse_d(int tied, double p, double t, const fl_smse_k *K)
{
    return tied && K->one ? (1.0 - t) - K->Q : p - t;
}

/* dl/dz_j scale = 2 p_j (p_max A_j + (Q u_j - V)) scale, A_j = tau u_j - U_T
 * off T; on T, p_max (tau w_j - W_T) - (tau w_j t_j - WT_T), whose
 * differences are exact for unweighted rows (reference.py) */
FL_INLINE double fl_smse_g(int tied, double p, double t, double wk, const fl_smse_k *K)
{
    double d = fl_smse_d(tied, p, t, K);
    double u = wk * d;
    double tw = K->tau * wk;
    double a = tied ? K->pm * (tw - K->W_T) - (tw * t - K->WT_T) : K->tau * u - K->U_T;
    double G = K->pm * a + (K->Q * u - K->V);
    return (2.0 * p * G) * K->sc;
}

#define FL_TS_BLOCK 1024  /* softmax_mse row sums: block partials, added pairwise */

/* Doubles of row work buffer: e; softmax_mse adds its block partials,
 * cross-entropy with smoothing or probabilities the scratch of its pairwise
 * target sums (fl_target_dot). */
FL_INLINE int64_t fl_row_buf_len(const fl_sm_ctx *c)
{
    /* softmax_mse: e, then two arrays of block partials (sums of
     * FL_TS_BLOCK entries, then V's of 64) */
    if (c->op_mse)
        return c->C + 2 * ((c->C + 63) / 64);
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
