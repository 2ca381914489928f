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

/* ---- softmax_mse rows.  With u = w (p - t), dl/dz_j = 2 p_j G_j, G_j =
 * sum_k p_k (u_j - u_k) (sum p = 1).  Summing then subtracting cancels to
 * noise where u_j ~ u_k for a heavy class k at or near the max ([-40, 0,
 * 0, 0]; [-6, 0, 2^-6]: p_1 - p_2 cancels 64x).  So the near set N (z - m
 * >= -ln2/2, decided once per class by the exp pass) keeps E = expm1(z -
 * m), p = p_max (1 + E) there: p_j - p_k = p_max (E_j - E_k) keeps its
 * digits and the 1s cancel exactly in the row sums (reference.py;
 * fl_smse_g in fl_softmax.c). ---- */

/* e esc of a tagged value x (fl_exp_tag): esc - x on N (e = 1 + E, E = -x
 * / esc), -x elsewhere.  The esc by a bit mask, not a select: gcc moved the
 * float64 division p = e / S into both arms of a select (two divisions). */
#define FL_EV(x, nr) (fl_from_bits(fl_bits(FL_ESC) & ((uint64_t)0 - (uint64_t)(nr))) - (x))

/* Tagged values into eb: near classes |E|, the rest -e (fl_exp_tag).
 * float32 rows: in float arithmetic times 2^100 (16 lanes; the 2^100 keeps
 * e normal).  A +inf row takes the limit: its +inf entries near with E =
 * 0, the rest e = 0. */
FL_INLINE void FL_V(fl_smse_exp)(const T *restrict z, double m, int64_t C, FL_EBT *restrict eb)
{
    if (m == __builtin_inf()) {
        for (int64_t k = 0; k < C; k++)
            eb[k] = z[k] == (T)m ? (FL_EBT)0.0 : -(FL_EBT)0.0;
    } else if (sizeof(T) == 4) {
        const float m32 = (float)m;  /* m is a float value: exact */
        for (int64_t k = 0; k < C; k++)
            eb[k] = fl_exp_tag_f32((float)z[k], m32);
    } else {
        for (int64_t k = 0; k < C; k++)
            eb[k] = fl_exp_tag((double)z[k] - m);  /* z - m <= 0, exact near the max */
    }
}

/* Loss (and gradient) of a weighted or probability-target row from the
 * tagged values, the row constants in K (the sums of fl_near_sums: A, WT,
 * BT, W, B already there); has_p, has_w are constants after inlining (no
 * per-entry branches).  The loss and VF terms go by blocks of 64 classes
 * to small arrays (a vector loop: a running sum would keep it scalar)
 * summed by fl_sum, the block partials (pb) added pairwise: VF cancels in
 * G_j, and one running loss over a long row drifts by tens of ulp. */
FL_INLINE void FL_V(fl_smse_general)(const FL_EBT *restrict e, T *restrict g, const T *restrict pr,
                                     const T *restrict w, int64_t y, int64_t C, fl_smse_k *K, double *restrict pb,
                                     double *lossp, int has_p, int has_w)
{
    const int f32 = sizeof(T) == 4;
    double *restrict lb = pb, *restrict vb = pb + (C + 63) / 64;
    double lt[64], vt[64];
    int64_t nblk = 0;
    for (int64_t k0 = 0; k0 < C; k0 += 64) {
        int64_t n = C - k0 > 64 ? 64 : C - k0;
        for (int64_t j = 0; j < n; j++) {
            int64_t k = k0 + j;
            double x = (double)e[k];
            int nr = fl_is_near(x);
            double p = fl_smse_p(FL_EV(x, nr), K, f32);
            double t = has_p ? (double)pr[k] : (k == y ? 1.0 : 0.0);
            double wk = has_w ? (double)w[k] : 1.0;
            double d = fl_smse_d(nr, p, -x * (1.0 / FL_ESC), t, K);
            double u = wk * d;
            lt[j] = u * d;
            vt[j] = nr ? 0.0 : p * u;
        }
        lb[nblk] = fl_sum(lt, n);
        vb[nblk++] = fl_sum(vt, n);
    }
    *lossp = fl_pairwise_inplace(lb, nblk);
    if (g == NULL)
        return;
    K->VF = fl_pairwise_inplace(vb, nblk);
    fl_smse_vn(K, has_w);
    /* labels: every entry as if t = 0 (a select on k == y kept the loop
     * scalar), the label after */
    for (int64_t k = 0; k < C; k++) {
        double x = (double)e[k];
        int nr = fl_is_near(x);
        double t = has_p ? (double)pr[k] : 0.0;
        double wk = has_w ? (double)w[k] : 1.0;
        g[k] = (T)fl_smse_g(nr, fl_smse_p(FL_EV(x, nr), K, f32), -x * (1.0 / FL_ESC), t, wk, K, has_w);
    }
    if (!has_p) {
        double x = (double)e[y];
        int nr = fl_is_near(x);
        double wk = has_w ? (double)w[y] : 1.0;
        g[y] = (T)fl_smse_g(nr, fl_smse_p(FL_EV(x, nr), K, f32), -x * (1.0 / FL_ESC), 1.0, wk, K, has_w);
    }
}

/* The row sums (fl_near_sums) by blocks of FL_TS_BLOCK into s, partials
 * added pairwise through pa (after the value buffer, which float rows
 * fill only half of); has_w, has_t: constants after inlining. */
FL_INLINE void FL_V(fl_smse_sums)(const FL_EBT *restrict e, const T *restrict w, const T *restrict pr, int64_t C,
                                  double *restrict pa, double *s, int has_w, int has_t)
{
    const int ns = has_w || has_t ? 8 : 4;
    int64_t nblk = (C + FL_TS_BLOCK - 1) / FL_TS_BLOCK;
    for (int64_t b = 0; b < nblk; b++) {
        int64_t k0 = b * FL_TS_BLOCK, n = C - k0 < FL_TS_BLOCK ? C - k0 : FL_TS_BLOCK;
        double sb[8];
        fl_near_sums(e + k0, has_w ? w + k0 : NULL, has_t ? pr + k0 : NULL, n, sizeof(T) == 4, FL_ESC, has_w, has_t,
                     sb);
        for (int i = 0; i < ns; i++)
            pa[i * nblk + b] = sb[i];
    }
    for (int i = 0; i < ns; i++)
        s[i] = fl_pairwise_inplace(pa + i * nblk, nblk);
}

/* softmax_mse of a valid row (no NaN, max m > -inf) into *lossp and g
 * (may be z: z is read only by the exp pass). */
static FL_ATTR void FL_V(fl_smse_row)(const fl_sm_ctx *c, const T *restrict z, T *g, const T *restrict pr,
                                      const T *restrict w, int64_t y, double m, double *eb, double *lossp)
{
    const int64_t C = c->C;
    const int f32 = sizeof(T) == 4;
    FL_EBT *restrict e = (FL_EBT *)eb;
    FL_V(fl_smse_exp)(z, m, C, e);
    double s[8];
    fl_smse_k K;
    if (pr == NULL && w == NULL) {
        /* plain (w = 1, one-hot t): loss, VF and VN from the sums, no loss loop */
        FL_V(fl_smse_sums)(e, w, pr, C, eb + C, s, 0, 0);
        fl_smse_consts(&K, s, FL_ESC, c->scale);
        double gy;
        *lossp = fl_smse_plain(&K, s, (double)e[y], FL_ESC, f32, &gy);
        if (g == NULL)
            return;
        /* every entry as if t = 0, the label after */
        T *restrict gr = g;  /* the loop reads only e */
        for (int64_t k = 0; k < C; k++) {
            double x = (double)e[k];
            int nr = fl_is_near(x);
            gr[k] = (T)fl_smse_g(nr, fl_smse_p(FL_EV(x, nr), &K, f32), -x * (1.0 / FL_ESC), 0.0, 1.0, &K, 0);
        }
        gr[y] = (T)gy;
        return;
    }
    /* the sums of w t, w t E, w e, w e E over N need no S: with the others */
    if (pr == NULL)
        FL_V(fl_smse_sums)(e, w, pr, C, eb + C, s, 1, 0);
    else if (w == NULL)
        FL_V(fl_smse_sums)(e, w, pr, C, eb + C, s, 0, 1);
    else
        FL_V(fl_smse_sums)(e, w, pr, C, eb + C, s, 1, 1);
    fl_smse_consts(&K, s, FL_ESC, c->scale);
    if (pr == NULL) {  /* one-hot t: sum_N w t, w t E are y's own */
        double xy = (double)e[y];
        int yn = fl_is_near(xy);
        s[4] = yn ? (double)w[y] : 0.0;
        s[5] = yn ? (double)w[y] * -xy : 0.0;
    }
    K.WT = s[4];
    K.BT = s[5] * (1.0 / FL_ESC);  /* the esc scalings are exact */
    K.A = K.WT + K.BT;             /* sum_N w t e, |BT| <= 0.35 WT */
    if (w != NULL) {
        K.W = s[6] * (1.0 / FL_ESC);
        K.B = s[7] * (1.0 / (FL_ESC * FL_ESC));
    }
    /* the pa partials are spent */
    if (pr == NULL)
        FL_V(fl_smse_general)(e, g, pr, w, y, C, &K, eb + C, lossp, 0, 1);
    else if (w == NULL)
        FL_V(fl_smse_general)(e, g, pr, w, y, C, &K, eb + C, lossp, 1, 0);
    else
        FL_V(fl_smse_general)(e, g, pr, w, y, C, &K, eb + C, lossp, 1, 1);
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
 * the tagged values of fl_exp_tag instead (near classes |E|, the rest -e). */
FL_INLINE void FL_V(fl_small_exp)(T *restrict E, const T *restrict mz, int64_t C, int nb, int tag)
{
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++) {
            T v = E[k * FL_RB + i];
            T e;
            if (sizeof(T) == 4)
                e = (T)(tag ? fl_exp_tag_f32((float)v, (float)mz[i]) : fl_exp_scaled_f32((float)v, (float)mz[i]));
            else
                e = (T)(tag ? fl_exp_tag((double)v - (double)mz[i]) : fl_exp_nonpos((double)v - (double)mz[i], 0));
            E[k * FL_RB + i] = e;
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
 * formulas across rows (the four row sums, then fl_smse_plain per row), so
 * there is no loss pass (numba's _smse_small_block).  F: FL_SF_N rows of
 * FL_RB doubles. */
FL_INLINE void FL_V(fl_smse_small_block)(const fl_sm_ctx *c, int64_t r0, int nb, T *restrict E,
                                         const T *restrict mz, const FL_IT *restrict yb,
                                         const FL_IT *restrict special, int ns,
                                         double *restrict F)
{
    const int64_t C = c->C;
    const double sc = c->scale;
    const int f32 = sizeof(T) == 4;
    double *restrict s0 = F + FL_SF_SN * FL_RB, *restrict eF = F + FL_SF_EF * FL_RB;
    double *restrict sEe = F + FL_SF_SEE * FL_RB, *restrict e2F = F + FL_SF_E2F * FL_RB;
    double *restrict S = F + FL_SF_S * FL_RB, *restrict rs = F + FL_SF_RS * FL_RB;
    double *restrict Q = F + FL_SF_Q * FL_RB, *restrict pm = F + FL_SF_PM * FL_RB;
    double *restrict sN = F + FL_SF_SNN * FL_RB, *restrict B = F + FL_SF_B * FL_RB;
    double *restrict A = F + FL_SF_A * FL_RB, *restrict VF = F + FL_SF_VF * FL_RB;
    double *restrict VNF = F + FL_SF_VNF * FL_RB, *restrict gy = F + FL_SF_GY * FL_RB;
    FL_V(fl_small_exp)(E, mz, C, nb, 1);
    /* the sums of fl_near_sums, per row */
    for (int i = 0; i < nb; i++) {
        s0[i] = 0.0;
        eF[i] = 0.0;
        sEe[i] = 0.0;
        e2F[i] = 0.0;
    }
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++) {
            double x = (double)E[k * FL_RB + i];
            uint64_t nm = (uint64_t)0 - (uint64_t)fl_is_near(x);  /* bit masks, not selects: */
            double ev = fl_from_bits(fl_bits(FL_ESC) & nm) - x;  /* no blends of the sums */
            double en = fl_from_bits(fl_bits(ev) & nm), ef = fl_from_bits(fl_bits(ev) & ~nm);
            s0[i] += en;  /* float32: e 2^100, e^2 2^200 (no overflow) */
            eF[i] += ef;
            sEe[i] -= en * x;
            e2F[i] += ef * ef;
        }
    /* per row: the constants, the loss and the label's gradient entry (from
     * the unrounded tagged value) */
    for (int i = 0; i < nb; i++) {
        double s[4] = {s0[i], eF[i], sEe[i], e2F[i]};
        fl_smse_k K;
        fl_smse_consts(&K, s, FL_ESC, sc);
        FL_IT y = yb[i] < 0 ? 0 : yb[i];  /* flagged rows: any in-range index */
        double g_y;
        c->loss[r0 + i] = fl_smse_plain(&K, s, (double)E[y * FL_RB + i], FL_ESC, f32, &g_y);
        S[i] = K.S;
        rs[i] = K.rs;
        Q[i] = K.Q;
        pm[i] = K.pm;
        sN[i] = K.sN;
        B[i] = K.B;
        A[i] = K.A;
        VF[i] = K.VF;
        VNF[i] = K.VN + K.VF;
        gy[i] = g_y;
    }
    if (c->g == NULL)
        return;
    /* every entry as if t = 0 (fl_smse_g with t = 0, w = 1), rounded to T;
     * the labels after the store */
    for (int64_t k = 0; k < C; k++)
        for (int i = 0; i < nb; i++) {
            double x = (double)E[k * FL_RB + i];
            int nr = fl_is_near(x);
            double ev = FL_EV(x, nr);
            double p = f32 ? ev * rs[i] : ev / S[i];
            double Gn = pm[i] * (pm[i] * ((-x * (1.0 / FL_ESC)) * sN[i] - B[i]) + A[i]) + (Q[i] * p - VF[i]);
            double Gf = p - VNF[i];
            E[k * FL_RB + i] = (T)((2.0 * p * (nr ? Gn : Gf)) * sc);
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
