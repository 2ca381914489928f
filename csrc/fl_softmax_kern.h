/* Instantiated by fl_softmax_impl.h per dtype T and ISA variant VAR
 * (function attributes FL_ATTR): the row loops. */
#define FL_V(name) FL_CAT(FL_N(name), VAR)

/* Fill a row of grad with v (NaN rows, skipped rows). */
FL_INLINE void FL_V(fl_fill)(T *g, int64_t C, double v)
{
    if (g != NULL)
        for (int64_t k = 0; k < C; k++)
            g[k] = (T)v;
}

/* Pass 2: e_k into eb and S' (sum over all but the argmax am); returns S'.
 * A row holding +inf takes the limit: e = 1 on its +inf entries, else 0. */
FL_INLINE double FL_V(fl_exp_row)(const T *restrict z, double m, int64_t am, int64_t C, double *restrict eb)
{
    if (m == __builtin_inf()) {
        for (int64_t k = 0; k < C; k++)
            eb[k] = z[k] == (T)m ? 1.0 : 0.0;
    } else {
        /* z - m <= 0, exact near the max (Sterbenz); short polynomial for float32 */
        for (int64_t k = 0; k < C; k++)
            eb[k] = fl_exp_nonpos((double)z[k] - m, sizeof(T) == 4);
    }
    /* S' leaves out e_am = 1: log1p(S') keeps what 1 + S' would round off */
    eb[am] = 0.0;
    double s1 = fl_sum(eb, C);
    eb[am] = 1.0;
    return s1;
}

/* Cross-entropy of a float32 row (labels, no smoothing, finite max m; a
 * float rows only): e 2^100 = exp(z - m) 2^100 in float arithmetic into the
 * float buffer eb (16 lanes, not 8), S' summed in double in a second pass,
 * and the bulk gradient one double product per entry (every a_k but the
 * label's is 0: g = p A scale). */
FL_INLINE void FL_V(fl_ce_row_f32)(const fl_sm_ctx *c, const T *z, T *g, int64_t y, double m, int64_t am,
                                   float *restrict eb, double *loss)
{
    const int64_t C = c->C;
    const float m32 = (float)m;  /* m is a float value: exact */
    for (int64_t k = 0; k < C; k++)
        eb[k] = fl_exp_scaled_f32((float)z[k], m32);
    /* S' leaves out e_am (2^100 scaled): log1p(S') keeps what 1 + S' rounds off */
    eb[am] = 0.0f;
    double s1 = fl_sum_f32(eb, C) * 0x1p-100;  /* exact: a power of 2 */
    eb[am] = 0x1p100f;
    double S = 1.0 + s1;
    double q = s1 / S;  /* 1 - p_argmax, never formed as a difference */
    double A = c->w != NULL ? (double)((const T *)c->w)[y] : 1.0;
    double Ar = y == am ? 0.0 : A;
    /* z[y] read before the gradient is written (g may be z) */
    *loss = A * fl_log1p_nonneg(s1) - fl_target_term(A, (double)z[y], m);
    if (g == NULL)
        return;
    double sc = c->scale;
    double rs = 0x1p-100 / S;  /* p = e 2^100 rs */
    double cg = rs * A * sc;   /* in double: the 2^-100 cannot underflow, one rounding */
    double py = (double)eb[y] * rs;
    for (int64_t k = 0; k < C; k++)
        g[k] = (T)((double)eb[k] * cg);
    if (y != am)
        g[y] = (T)(sc * (py * A - A));
    /* argmax entry: p A - a = A' - A q, exact when p rounds to 1 */
    g[am] = (T)(sc * (Ar - A * q));
}

/* sum_k a_k (z_k - m) with a_k = t_k w_k, A = sum_k a_k, and A' = the sum
 * of a_k over k != am (the argmax gradient sums it, never forms A - a_am).
 * Pairwise sums through the scratch sb (C doubles): A multiplies every
 * p_k, and a running sum of C equal smoothing terms eps/C rounds the same
 * way C times (float64, C = 128256: A off by ~3000 ulp, the gradient by
 * 50x the test tolerance); pairwise, ~log2(C)/2 ulp. */
FL_INLINE double FL_V(fl_target_dot)(const T *restrict z, double m, const T *restrict pr, int64_t y,
                                     const T *restrict w, int64_t C, double keep, double spread, int64_t am,
                                     double *restrict sb, double *A_out, double *Arest_out)
{
#define FL_A(k) (fl_target(pr != NULL ? (double)pr[k] : ((k) == y ? 1.0 : 0.0), keep, spread) \
                 * (w != NULL ? (double)w[k] : 1.0))
    for (int64_t k = 0; k < C; k++)
        sb[k] = FL_A(k);
    double a_am = sb[am];
    sb[am] = 0.0;
    double Ar = fl_pairwise_inplace(sb, C);
    *Arest_out = Ar;
    *A_out = Ar + a_am;
    for (int64_t k = 0; k < C; k++)
        sb[k] = fl_target_term(FL_A(k), (double)z[k], m);
#undef FL_A
    return fl_pairwise_inplace(sb, C);
}

/* ---- softmax_mse rows.  With u = w (p - t), dl/dz_j = 2 p_j (u_j -
 * sum_k p_k u_k); the bracket cancels to noise when most mass sits on
 * classes tied with the max ([-40, 0, 0, 0]).  Split off T = {k: z_k == m}
 * (e = 1, p = p_max), tau = |T|, and use sum p = 1:
 *   u_j - sum p u = p_max (tau u_j - U_T) + (Q u_j - V),
 * Q = sum_{not T} p, V = sum_{not T} p u (reference.py; fl_smse_g). ---- */

/* p of a stored (tagged) e: float32 rows one product (e 2^100 rs; the extra
 * rounding is far below float32's), float64 rows a division */
#define FL_PX(x, K) (sizeof(T) == 4 ? __builtin_fabs(x) * (K).rs : __builtin_fabs(x) / (K).S)

/* e = exp(z - m) into eb, tagged by sign: tied classes (z == m: e exactly
 * 1) +e, the rest -e (an untied e may round to 1, so the tie must survive
 * in the sign).  float32 rows: e 2^100 in float arithmetic (16 lanes; the
 * 2^100 keeps e normal).  A +inf row takes the limit: e = 1 on its +inf
 * entries, 0 elsewhere. */
FL_INLINE void FL_V(fl_smse_exp)(const T *restrict z, double m, int64_t C, FL_EBT *restrict eb)
{
    if (m == __builtin_inf()) {
        for (int64_t k = 0; k < C; k++)
            eb[k] = z[k] == (T)m ? (FL_EBT)FL_ESC : -(FL_EBT)0.0;
    } else if (sizeof(T) == 4) {
        const float m32 = (float)m;  /* m is a float value: exact */
        for (int64_t k = 0; k < C; k++) {
            float e = fl_exp_scaled_f32((float)z[k], m32);
            eb[k] = (float)z[k] == m32 ? e : -e;
        }
    } else {
        for (int64_t k = 0; k < C; k++) {
            double e = fl_exp_nonpos((double)z[k] - m, 0);  /* z - m <= 0, exact near the max */
            eb[k] = (double)z[k] == m ? e : -e;
        }
    }
}

/* Loss (and gradient) of a weighted or probability-target row from the
 * tagged e; has_p, has_w are constants after inlining (no per-entry
 * branches).  Per block of 64 classes the terms go to small arrays (a
 * vector loop: a running sum would keep it scalar) summed by fl_sum; the
 * l and V block partials (lb, vb) are added pairwise: V cancels in u_j -
 * sum p u, and one running l over a long row drifts by tens of ulp. */
FL_INLINE void FL_V(fl_smse_general)(const FL_EBT *restrict e, T *restrict g, const T *restrict pr,
                                     const T *restrict w, int64_t y, int64_t C, fl_smse_k *K, double *restrict lb,
                                     double *restrict vb, double *lossp, int has_p, int has_w)
{
    double W_T = 0.0, WT_T = 0.0;
    double lt[64], vt[64], wt[64], wtt[64];
    int64_t nblk = 0;
    for (int64_t k0 = 0; k0 < C; k0 += 64) {
        int64_t n = C - k0 > 64 ? 64 : C - k0;
        for (int64_t j = 0; j < n; j++) {
            int64_t k = k0 + j;
            double x = (double)e[k];
            int tied = x > 0.0;
            double p = FL_PX(x, *K);
            double t = has_p ? (double)pr[k] : (k == y ? 1.0 : 0.0);
            double wk = has_w ? (double)w[k] : 1.0;
            double d = fl_smse_d(tied, p, t, K);
            double u = wk * d;
            lt[j] = u * d;
            vt[j] = tied ? 0.0 : p * u;
            wt[j] = tied ? wk : 0.0;
            wtt[j] = tied ? wk * t : 0.0;
        }
        lb[nblk] = fl_sum(lt, n);
        vb[nblk++] = fl_sum(vt, n);
        W_T += fl_sum(wt, n);
        WT_T += fl_sum(wtt, n);
    }
    *lossp = fl_pairwise_inplace(lb, nblk);
    if (g == NULL)
        return;
    K->V = fl_pairwise_inplace(vb, nblk);
    K->W_T = W_T;
    K->WT_T = WT_T;
    /* U_T = p_max W_T - WT_T cancels when a tied class is the label; with
     * tau p_max = 1 - Q it is (W_T/tau - WT_T) - Q W_T/tau */
    double w_bar = W_T / K->tau;
    K->U_T = (w_bar - WT_T) - K->Q * w_bar;
    for (int64_t k = 0; k < C; k++) {
        double x = (double)e[k];
        double t = has_p ? (double)pr[k] : (k == y ? 1.0 : 0.0);
        double wk = has_w ? (double)w[k] : 1.0;
        g[k] = (T)fl_smse_g(x > 0.0, FL_PX(x, *K), t, wk, K);
    }
}

/* softmax_mse of a valid row (no NaN, max m > -inf) into *lossp and g
 * (may be z: z is read only by the exp pass). */
static FL_ATTR void FL_V(fl_smse_row)(const fl_sm_ctx *c, const T *restrict z, T *g, const T *restrict pr,
                                      const T *restrict w, int64_t y, double m, double *eb, double *lossp)
{
    const int64_t C = c->C;
    FL_EBT *restrict e = (FL_EBT *)eb;
    FL_V(fl_smse_exp)(z, m, C, e);
    /* tau, and the sums of e and e^2 off T: blocks, partials added pairwise
     * (after the float buffer, which takes at most C / 2 doubles) */
    int64_t nblk = (C + FL_TS_BLOCK - 1) / FL_TS_BLOCK;
    double *pa = eb + C, *pb = pa + nblk;
    double tau = 0.0;
    for (int64_t b = 0; b < nblk; b++) {
        int64_t k0 = b * FL_TS_BLOCK, n = C - k0 < FL_TS_BLOCK ? C - k0 : FL_TS_BLOCK;
        double tb;
        fl_tagged_sums(e + k0, n, sizeof(T) == 4, &tb, &pa[b], &pb[b]);
        tau += tb;  /* exact: integer counts */
    }
    /* float32 rows: e 2^100, e^2 2^200 (<= 2^200: no overflow); the rescale is exact */
    double e_rest = fl_pairwise_inplace(pa, nblk) * (1.0 / FL_ESC);
    double e2_rest = fl_pairwise_inplace(pb, nblk) * (1.0 / (FL_ESC * FL_ESC));
    fl_smse_k K;
    K.tau = tau;
    K.S = tau + e_rest;  /* sum e with e = 1 on T: one rounding, no sum over T */
    K.pm = 1.0 / K.S;
    K.rs = (1.0 / FL_ESC) / K.S;
    K.Q = e_rest / K.S;  /* 1 - tau p_max, never formed as a difference */
    K.one = tau == 1.0;
    K.sc = c->scale;
    if (pr != NULL || w != NULL) {
        double *lb = eb + C, *vb = lb + (C + 63) / 64;  /* the pa/pb partials are spent */
        if (pr == NULL)
            FL_V(fl_smse_general)(e, g, pr, w, y, C, &K, lb, vb, lossp, 0, 1);
        else if (w == NULL)
            FL_V(fl_smse_general)(e, g, pr, w, y, C, &K, lb, vb, lossp, 1, 0);
        else
            FL_V(fl_smse_general)(e, g, pr, w, y, C, &K, lb, vb, lossp, 1, 1);
        return;
    }
    /* plain (w = 1, one-hot t): no loss loop.  With P2 = sum_{not T} p^2
     * (e^2_rest / S^2):  V = P2 - [y not in T] p_y and
     * l = P2 + [y not in T] (1 - 2 p_y) + the d^2 of T's classes */
    double xy = (double)e[y];
    int yt = xy > 0.0;
    double py = FL_PX(xy, K);
    double P2 = e2_rest / (K.S * K.S);
    double WT_T = yt ? 1.0 : 0.0;
    double l;
    if (yt) {
        K.V = P2;
        l = P2;
    } else {
        K.V = P2 - py;
        l = P2 + (1.0 - 2.0 * py);  /* = P2 - p_y^2 + (p_y - 1)^2; p_y <= 1/2: no cancellation */
    }
    if (K.one) {
        double dt = (1.0 - WT_T) - K.Q;
        l += dt * dt;
    } else {  /* d = p_max - t on T */
        l += (tau - WT_T) * (K.pm * K.pm) + WT_T * ((K.pm - 1.0) * (K.pm - 1.0));
    }
    *lossp = l;
    if (g == NULL)
        return;
    K.W_T = tau;
    K.WT_T = WT_T;
    K.U_T = (1.0 - WT_T) - K.Q;  /* (W_T/tau - WT_T) - Q W_T/tau with W_T/tau = 1 */
    /* every entry as if t = 0 (T's entries are one value), the label after */
    T *restrict gr = g;  /* the loop reads only e */
    const T gT = (T)fl_smse_g(1, K.pm, 0.0, 1.0, &K);
    for (int64_t k = 0; k < C; k++) {
        double x = (double)e[k];
        gr[k] = x > 0.0 ? gT : (T)fl_smse_g(0, FL_PX(x, K), 0.0, 1.0, &K);
    }
    gr[y] = (T)fl_smse_g(yt, py, 1.0, 1.0, &K);
}

/* Row r, with the work buffer eb (fl_row_buf_len doubles, NULL when out of
 * memory). */
static FL_ATTR void FL_V(fl_row)(const fl_sm_ctx *c, int64_t r, double *eb)
{
    const int64_t C = c->C;
    const T *w = c->w;
    double keep = 1.0 - c->smoothing, spread = c->smoothing / (double)C;
    {
        const T *restrict z = (const T *)c->z + r * C;
        const T *restrict pr = c->probs != NULL ? (const T *)c->probs + r * C : NULL;
        T *g = c->g != NULL ? (T *)c->g + r * C : NULL;
        int64_t y = c->labels != NULL ? c->labels[r] : -1;
        int valid = c->labels == NULL || y != c->ignore_index;

        /* pass 1: NaN flag and max, then first argmax.  The max is an
         * integer max of order-preserving keys of the bits (gcc does not
         * vectorise a float max reduction without -ffast-math); NaN rows
         * leave here, so their keys never matter. */
        FL_IT kmax = FL_IT_MIN;
        int nan = 0;
        for (int64_t k = 0; k < C; k++) {
            FL_IT b;
            memcpy(&b, &z[k], sizeof b);
            nan |= z[k] != z[k];
            b ^= (b >> FL_IT_SHIFT) & FL_IT_MAG;  /* negative: flip the magnitude bits */
            kmax = b > kmax ? b : kmax;
        }
        kmax ^= (kmax >> FL_IT_SHIFT) & FL_IT_MAG;
        T mx;
        memcpy(&mx, &kmax, sizeof mx);
        /* a label outside [0, C) (the Python layer rejects these; a direct
         * kernel call gets a NaN row, never a read out of bounds) */
        nan |= valid && c->labels != NULL && (y < 0 || y >= C);
        if (nan) {  /* NaN anywhere in the row: NaN loss and gradient */
            c->loss[r] = __builtin_nan("");
            FL_V(fl_fill)(g, C, __builtin_nan(""));
            return;
        }
        /* ignored row, or every class masked (-inf): loss 0, gradient 0 */
        if (!valid || mx == -__builtin_inf() || eb == NULL) {
            c->loss[r] = eb == NULL ? __builtin_nan("") : 0.0;  /* NaN flags out-of-memory */
            FL_V(fl_fill)(g, C, eb == NULL ? __builtin_nan("") : 0.0);
            return;
        }
        if (c->op_mse) {
            FL_V(fl_smse_row)(c, z, g, pr, w, y, (double)mx, eb, &c->loss[r]);
            return;
        }
        int64_t am = 0;  /* first index holding mx: test 16 entries at once, then scan that block */
        for (int64_t b0 = 0; b0 < C; b0 += 16) {
            int64_t b1 = C - b0 < 16 ? C : b0 + 16;
            int hit = 0;
            for (int64_t k = b0; k < b1; k++)
                hit |= z[k] == mx;
            if (hit) {
                am = b0;
                while (z[am] != mx)
                    am++;
                break;
            }
        }
        double m = mx;
        if (sizeof(T) == 4 && C >= FL_F32_ROW_MIN && c->probs == NULL && spread == 0.0 && m < __builtin_inf()) {
            FL_V(fl_ce_row_f32)(c, z, g, y, m, am, (float *)eb, &c->loss[r]);
            return;
        }

        /* pass 2 */
        double s1 = FL_V(fl_exp_row)(z, m, am, C, eb);
        double S = 1.0 + s1;
        double q = s1 / S;  /* 1 - p_argmax, never formed as a difference */
        double sc = c->scale;

        /* p = e / S; for float32 results one reciprocal (an extra rounding
         * far below float32's) instead of a division per entry */
        double invS = 1.0 / S;
#define FL_P(k) (sizeof(T) == 4 ? eb[k] * invS : eb[k] / S)
        double A, Ar, dot;
        int plain = pr == NULL && spread == 0.0;  /* one-hot labels: one nonzero a */
        if (plain) {
            A = w != NULL ? (double)w[y] : 1.0;
            Ar = y == am ? 0.0 : A;
            dot = fl_target_term(A, (double)z[y], m);
        } else {
            dot = FL_V(fl_target_dot)(z, m, pr, y, w, C, keep, spread, am, eb + C, &A, &Ar);
        }
        /* -sum a log p = A log S - sum a (z - m): both terms >= 0, so a
         * dominant label (p -> 1) loses nothing to cancellation */
        c->loss[r] = A * fl_log1p_nonneg(s1) - dot;
        if (g == NULL)
            return;
        if (plain) {
            for (int64_t k = 0; k < C; k++)
                g[k] = (T)(sc * (FL_P(k) * A));
            g[y] = (T)(sc * (FL_P(y) * A - A));
        } else {
            for (int64_t k = 0; k < C; k++) {
                double t = fl_target(pr != NULL ? (double)pr[k] : (k == y ? 1.0 : 0.0), keep, spread);
                double a = t * (w != NULL ? (double)w[k] : 1.0);
                g[k] = (T)(sc * (FL_P(k) * A - a));
            }
        }
        /* argmax entry: p A - a = A' - A q, exact when p rounds to 1 */
        g[am] = (T)(sc * (Ar - A * q));
    }
}
#undef FL_P

static FL_ATTR void FL_V(fl_rows)(void *vctx, int64_t r0, int64_t r1)
{
    const fl_sm_ctx *c = vctx;
    double *eb = malloc(sizeof(double) * (size_t)fl_row_buf_len(c));
    for (int64_t r = r0; r < r1; r++)
        FL_V(fl_row)(c, r, eb);
    free(eb);
}

/* ---- Short rows: plain cross-entropy and softmax_mse (labels, no
 * weights, no smoothing, C <= FL_SMALL_C; mirrors numba's _small_rows).
 * Per-row passes over a few classes are all overhead, so a block of FL_RB
 * rows is transposed once into E (class-major, in T) and every pass is a
 * contiguous vector loop across rows.  Rows needing the general treatment
 * (NaN, +-inf max, ignored label) keep z in the gradient here and are
 * redone by fl_row afterwards, so the in-place call gives the same bits.
 * Blocks are the unit of threading: a row's result depends only on the
 * row. ---- */

/* Vector bytes of each variant: generic vectors wider than the registers
 * can lower to scalar code (compares and selects did, 1.5-2.6x slower).
 * The block transposes take 256-bit tiles (8 float32, 4 float64) in the
 * AVX variants, 128-bit ones in the portable variant. */
#define FL_VB_base 16
#define FL_VB_v3 32
#define FL_VB_v4 64
#define FL_VB FL_CAT(FL_VB, VAR)

/* n x w tiles of d[k ds + i] = s[i ss + k], i < n, k < m, n, m >= w; the
 * last tile of a row or column overlaps the one before (a move: the
 * overlap rewrites the same bits). */
FL_INLINE void FL_V(fl_tiles)(const T *restrict s, int64_t ss, T *restrict d, int64_t ds, int64_t n, int64_t m,
                              int w)
{
#ifdef FL_HAVE_TILES
    for (int64_t i = 0; i < n; i += w) {
        const int64_t i0 = i + w <= n ? i : n - w;
        for (int64_t k = 0; k < m; k += w) {
            const int64_t k0 = k + w <= m ? k : m - w;
            const T *si = s + i0 * ss + k0;
            T *di = d + k0 * ds + i0;
            if (sizeof(T) == 4 && w == 8)
                fl_tile8_f32((const float *)si, ss, (float *)di, ds);
            else if (sizeof(T) == 4)
                fl_tile4_f32((const float *)si, ss, (float *)di, ds);
            else if (w == 4)
                fl_tile4_f64((const double *)si, ss, (double *)di, ds);
            else
                fl_tile2_f64((const double *)si, ss, (double *)di, ds);
        }
    }
#endif
}

/* The n x m transpose d[k ds + i] = s[i ss + k] by tiles (the widest that
 * fits both sides); returns 0, having done nothing, when none fits. */
FL_INLINE int FL_V(fl_transpose)(const T *restrict s, int64_t ss, T *restrict d, int64_t ds, int64_t n, int64_t m)
{
#ifdef FL_HAVE_TILES
    const int big = (FL_VB >= 32 ? 32 : 16) / (int)sizeof(T);
    const int64_t lim = n < m ? n : m;
    if (lim >= big) {
        FL_V(fl_tiles)(s, ss, d, ds, n, m, big);
        return 1;
    }
    if (FL_VB >= 32 && lim >= big / 2) {
        FL_V(fl_tiles)(s, ss, d, ds, n, m, big / 2);
        return 1;
    }
#endif
    return 0;
}

#if defined(__GNUC__)
/* register-wide vectors of T and of its same-width integer (compare masks) */
typedef T FL_V(fl_vt) __attribute__((vector_size(FL_VB)));
typedef FL_IT FL_V(fl_vi) __attribute__((vector_size(FL_VB)));
#define FL_VL ((int)(FL_VB / sizeof(T)))
#endif

/* Rows r0..r0+nb into E (class-major), the row max mz and first argmax am,
 * labels yb (-1 when out of range) and z_y (read before the gradient is
 * written); flags the rows fl_row must redo and returns their count.  Max
 * and argmax in T with indices of T's width: same-width lanes vectorise. */
FL_INLINE int FL_V(fl_small_front)(const fl_sm_ctx *c, int64_t r0, int nb, T *restrict E, T *restrict mz,
                                   FL_IT *restrict am, FL_IT *restrict yb, FL_IT *restrict special,
                                   double *restrict zy)
{
    const int64_t C = c->C;
    const T *restrict zb = (const T *)c->z + r0 * C;
    const int64_t *restrict lab = c->labels + r0;
    /* class-major copy by tiles, else contiguous stores; the NaN test
     * waits for the max pass (in a row-major copy it kept the loop scalar).
     * Gathers (indexed loads) measured no faster here. */
    if (!FL_V(fl_transpose)(zb, C, E, FL_RB, nb, C))
        for (int64_t k = 0; k < C; k++)
            for (int i = 0; i < nb; i++)
                E[k * FL_RB + i] = zb[i * C + k];
    for (int i = 0; i < nb; i++) {
        int64_t y = lab[i];
        int ok = y >= 0 && y < C;
        yb[i] = ok ? (FL_IT)y : -1;
        zy[i] = (double)E[(ok ? y : 0) * FL_RB + i];  /* from the copy: in cache */
    }
    /* first argmax by selects: a NaN never wins a comparison (flagged) */
#if defined(__GNUC__)
    if (nb >= FL_VL) {  /* a vector of rows at a time over all classes, in registers */
        for (int i0 = 0; i0 < nb; i0 += FL_VL) {
            const int i = i0 + FL_VL <= nb ? i0 : nb - FL_VL;  /* the last overlaps: same results */
            FL_V(fl_vt) m, v;
            memcpy(&m, E + i, sizeof m);
            FL_V(fl_vi) a = {0}, nan = m != m;
            for (int64_t k = 1; k < C; k++) {
                memcpy(&v, E + k * FL_RB + i, sizeof v);
                FL_V(fl_vi) gt = v > m;
                nan |= v != v;
                a = (a & ~gt) | (gt & (FL_IT)k);
                m = (FL_V(fl_vt))(((FL_V(fl_vi))m & ~gt) | ((FL_V(fl_vi))v & gt));
            }
            nan &= 1;
            memcpy(mz + i, &m, sizeof m);
            memcpy(am + i, &a, sizeof a);
            memcpy(special + i, &nan, sizeof nan);
        }
    } else
#endif
    {
        for (int i = 0; i < nb; i++) {
            T v = E[i];
            mz[i] = v;
            am[i] = 0;
            special[i] = v != v;
        }
        for (int64_t k = 1; k < C; k++)
            for (int i = 0; i < nb; i++) {
                T v = E[k * FL_RB + i];
                FL_IT gt = v > mz[i];
                special[i] |= v != v;
                am[i] = gt ? (FL_IT)k : am[i];
                mz[i] = gt ? v : mz[i];
            }
    }
    int ns = 0;
    for (int i = 0; i < nb; i++) {
        T m = mz[i];
        FL_IT sp = special[i] | !(m < (T)__builtin_inf() && m > -(T)__builtin_inf()) | (yb[i] < 0)
                   | (lab[i] == c->ignore_index);
        special[i] = sp;
        ns += sp != 0;
    }
    return ns;
}

/* e = exp(z - m) over the block, in place.  float32 blocks: e 2^100 in
 * float arithmetic (fl_exp_scaled_f32, twice the lanes of the double exp;
 * as the float32 long rows), float64: the double exp.  tag (softmax_mse):
 * tied classes (z == m, e = 1) stored as +e, the rest as -e. */
FL_INLINE void FL_V(fl_small_exp)(T *restrict E, const T *restrict mz, int64_t C, int nb, int tag)
{
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++) {
            T v = E[k * FL_RB + i];
            T e = sizeof(T) == 4 ? (T)fl_exp_scaled_f32((float)v, (float)mz[i])
                                 : (T)fl_exp_nonpos((double)v - (double)mz[i], 0);
            E[k * FL_RB + i] = tag && v != mz[i] ? -e : e;
        }
}

/* Gradient rows from the class-major block (already rounded to T).
 * Flagged rows get z back first (in place, fl_row still reads them; it
 * rewrites the whole row either way), so the copy needs no select. */
FL_INLINE void FL_V(fl_small_store)(const fl_sm_ctx *c, int64_t r0, int nb, T *restrict E,
                                    const FL_IT *restrict special, int ns)
{
    const int64_t C = c->C;
    const T *zb = (const T *)c->z + r0 * C;
    T *gb = (T *)c->g + r0 * C;  /* may be zb: flagged rows read before any write */
    for (int i = 0; ns > 0 && i < nb; i++)
        if (special[i])
            for (int64_t k = 0; k < C; k++)
                E[k * FL_RB + i] = zb[i * C + k];
    if (!FL_V(fl_transpose)(E, FL_RB, gb, C, C, nb))
        for (int i = 0; i < nb; i++)
            for (int64_t k = 0; k < C; k++)
                gb[i * C + k] = E[k * FL_RB + i];
}

/* Plain cross-entropy of a block after fl_small_front (outputs of flagged
 * rows are not meaningful). */
FL_INLINE void FL_V(fl_ce_small_block)(const fl_sm_ctx *c, int64_t r0, int nb, T *restrict E, const T *restrict mz,
                                       const FL_IT *restrict am, const FL_IT *restrict yb,
                                       const FL_IT *restrict special, int ns,
                                       const double *restrict zy, double *restrict s1, double *restrict cg, double *restrict gy)
{
    const int64_t C = c->C;
    const double sc = c->scale;
    const double esc = sizeof(T) == 4 ? 0x1p-100 : 1.0;  /* float32 e carries 2^100 */
    FL_V(fl_small_exp)(E, mz, C, nb, 0);
    /* S' = the sum of e without the argmax, in double */
    for (int i = 0; i < nb; i++)
        s1[i] = 0.0;
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++)
            s1[i] += (FL_IT)k == am[i] ? 0.0 : (double)E[k * FL_RB + i];
    /* loss = log S - (z_y - m), S = 1 + S': two terms >= 0, no cancellation */
    for (int i = 0; i < nb; i++) {
        double s = s1[i] * esc;  /* exact: a power of 2 */
        s1[i] = s;
        c->loss[r0 + i] = fl_log1p_nonneg(s) - (zy[i] - (double)mz[i]);
        cg[i] = (esc / (1.0 + s)) * sc;  /* p scale = e cg: one rounding per entry below */
    }
    if (c->g == NULL)
        return;
    /* label entries first, from the unrounded e */
    for (int i = 0; i < nb; i++) {
        FL_IT y = yb[i] < 0 ? 0 : yb[i];  /* flagged rows: any in-range index */
        if (y == am[i])  /* p_y - 1 = -S'/S, never formed as a difference */
            gy[i] = -(s1[i] / (1.0 + s1[i])) * sc;
        else  /* p_y <= 1/2 here: p_y - 1 has no cancellation */
            gy[i] = (double)E[y * FL_RB + i] * cg[i] - sc;
    }
    /* p scale for the rest, rounded once to T */
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++)
            E[k * FL_RB + i] = (T)((double)E[k * FL_RB + i] * cg[i]);
    FL_V(fl_small_store)(c, r0, nb, E, special, ns);
    T *gb = (T *)c->g + r0 * C;
    for (int i = 0; i < nb; i++)
        if (!special[i])
            gb[i * C + yb[i]] = (T)gy[i];
}
/* Plain softmax_mse of a block after fl_small_front: fl_smse_row's plain
 * formulas (w = 1: W_T = tau, WT_T = [the label is tied]) across rows, so
 * there is no loss pass (numba's _smse_small_block).  F: FL_SF_N rows of
 * FL_RB doubles. */
FL_INLINE void FL_V(fl_smse_small_block)(const fl_sm_ctx *c, int64_t r0, int nb, T *restrict E,
                                         const T *restrict mz, const FL_IT *restrict yb,
                                         const FL_IT *restrict special, int ns,
                                         double *restrict F)
{
    const int64_t C = c->C;
    const double sc = c->scale;
    const double esc = sizeof(T) == 4 ? 0x1p-100 : 1.0;  /* float32 e carries 2^100 */
    double *restrict tau = F + FL_SF_TAU * FL_RB, *restrict er = F + FL_SF_EREST * FL_RB;
    double *restrict e2 = F + FL_SF_E2 * FL_RB, *restrict S = F + FL_SF_S * FL_RB;
    double *restrict rs = F + FL_SF_RS * FL_RB, *restrict Q = F + FL_SF_Q * FL_RB;
    double *restrict pm = F + FL_SF_PM * FL_RB, *restrict V = F + FL_SF_V * FL_RB;
    double *restrict ut = F + FL_SF_UT * FL_RB, *restrict gt = F + FL_SF_GT * FL_RB;
    double *restrict gy = F + FL_SF_GY * FL_RB;
    FL_V(fl_small_exp)(E, mz, C, nb, 1);
    /* tau = |T| (exact counts), the sums of e and e^2 off T */
    for (int i = 0; i < nb; i++) {
        tau[i] = 0.0;
        er[i] = 0.0;
        e2[i] = 0.0;
    }
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++) {
            double v = (double)E[k * FL_RB + i];
            int tied = v > 0.0;
            tau[i] += tied ? 1.0 : 0.0;
            er[i] += tied ? 0.0 : -v;
            e2[i] += tied ? 0.0 : v * v;  /* float32: e^2 2^200, no overflow */
        }
    /* per row: loss, V and U_T from the sums; T's gradient entry (t = 0)
     * and the label's, read from the unrounded e */
    for (int i = 0; i < nb; i++) {
        fl_smse_k K;
        double e_rest = er[i] * esc;  /* exact: a power of 2 */
        K.tau = tau[i];
        K.S = tau[i] + e_rest;  /* sum e, e = 1 on T: one rounding */
        K.pm = 1.0 / K.S;
        K.rs = esc / K.S;       /* float32: p = e 2^100 rs, one product */
        K.Q = e_rest / K.S;     /* 1 - tau p_max, never a difference */
        K.one = tau[i] == 1.0;
        K.sc = sc;
        FL_IT y = yb[i] < 0 ? 0 : yb[i];  /* flagged rows: any in-range index */
        double xy = (double)E[y * FL_RB + i];
        int yt = xy > 0.0;
        double py = FL_PX(xy, K);
        double P2 = e2[i] * (esc * esc) / (K.S * K.S);  /* sum_{not T} p^2 */
        double WT_T = yt ? 1.0 : 0.0;
        /* V = P2 - [y not in T] p_y; l = P2 + [y not in T] (1 - 2 p_y) + T's
         * d^2 (as fl_smse_row) */
        K.V = yt ? P2 : P2 - py;
        double l = yt ? P2 : P2 + (1.0 - 2.0 * py);
        double dt = (1.0 - WT_T) - K.Q;  /* a lone max: exact when p_max rounds to 1 */
        l += K.one ? dt * dt : (K.tau - WT_T) * (K.pm * K.pm) + WT_T * ((K.pm - 1.0) * (K.pm - 1.0));
        c->loss[r0 + i] = l;
        K.W_T = K.tau;
        K.WT_T = WT_T;
        K.U_T = (1.0 - WT_T) - K.Q;  /* (W_T/tau - WT_T) - Q W_T/tau, W_T/tau = 1 */
        S[i] = K.S;
        rs[i] = K.rs;
        Q[i] = K.Q;
        pm[i] = K.pm;
        V[i] = K.V;
        ut[i] = K.U_T;
        gt[i] = fl_smse_g(1, K.pm, 0.0, 1.0, &K);
        gy[i] = fl_smse_g(yt, py, 1.0, 1.0, &K);
    }
    if (c->g == NULL)
        return;
    /* every entry as if t = 0 (T's entries are one value per row), rounded
     * to T; the labels after the store */
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++) {
            double x = (double)E[k * FL_RB + i];
            double p = sizeof(T) == 4 ? __builtin_fabs(x) * rs[i] : __builtin_fabs(x) / S[i];
            /* fl_smse_g off T with t = 0, w = 1 */
            double G = pm[i] * (tau[i] * p - ut[i]) + (Q[i] * p - V[i]);
            E[k * FL_RB + i] = (T)(x > 0.0 ? gt[i] : (2.0 * p * G) * sc);
        }
    FL_V(fl_small_store)(c, r0, nb, E, special, ns);
    T *gb = (T *)c->g + r0 * C;
    for (int i = 0; i < nb; i++)
        if (!special[i])
            gb[i * C + yb[i]] = (T)gy[i];
}

/* Blocks b0..b1 of FL_RB rows, either op. */
static FL_ATTR void FL_V(fl_rows_small)(void *vctx, int64_t b0, int64_t b1)
{
    const fl_sm_ctx *c = vctx;
    const int64_t C = c->C, R = c->R;
    /* one allocation, 64-byte aligned parts: F (per-row doubles), E (the
     * block, class-major) and mz, am, yb, special, then fl_row's buffer */
    const size_t nF = (size_t)FL_SF_N * FL_RB, nE = (size_t)(C + 1) * FL_RB;
    char *raw = malloc(sizeof(double) * (nF + (size_t)fl_row_buf_len(c)) + sizeof(T) * nE
                       + sizeof(FL_IT) * 3 * FL_RB + 64);
    if (raw == NULL) {  /* fl_row flags out-of-memory with NaN */
        for (int64_t r = b0 * FL_RB; r < R && r < b1 * FL_RB; r++)
            FL_V(fl_row)(c, r, NULL);
        return;
    }
    double *F = (double *)(raw + (-(uintptr_t)raw & 63));
    T *E = (T *)(F + nF);
    T *mz = E + C * FL_RB;
    FL_IT *am = (FL_IT *)(E + nE), *yb = am + FL_RB, *special = yb + FL_RB;
    double *rowbuf = (double *)(special + FL_RB);
    for (int64_t b = b0; b < b1; b++) {
        const int64_t r0 = b * FL_RB;
        const int nb = (int)(R - r0 < FL_RB ? R - r0 : FL_RB);
        int ns = FL_V(fl_small_front)(c, r0, nb, E, mz, am, yb, special, F + FL_SF_ZY * FL_RB);
        if (c->op_mse)
            FL_V(fl_smse_small_block)(c, r0, nb, E, mz, yb, special, ns, F);
        else
            FL_V(fl_ce_small_block)(c, r0, nb, E, mz, am, yb, special, ns, F + FL_SF_ZY * FL_RB,
                                    F + FL_SF_S * FL_RB, F + FL_SF_RS * FL_RB, F + FL_SF_Q * FL_RB);
        for (int i = 0; ns > 0 && i < nb; i++)
            if (special[i])
                FL_V(fl_row)(c, r0 + i, rowbuf);
    }
    free(raw);
}

#undef FL_V
