/* Instantiated by fl_elementwise.c for T = float (SFX f32) and double (f64). */
#define FL_CAT2(a, b) a##_##b
#define FL_CAT(a, b) FL_CAT2(a, b)
#define FL_N(name) FL_CAT(name, SFX)

/* Block [i0, i0+m) element parameters: w[i % P] as a contiguous pointer,
 * expanded into buf when P does not cover the block contiguously. */
FL_INLINE const T *FL_N(fl_periodic)(const T *w, int64_t P, int64_t i0, int m, T *buf, const T *ones)
{
    if (w == NULL)
        return ones;
    int64_t k = i0 % P;
    if (k + m <= P)
        return w + k;
    for (int j = 0; j < m; j++) {  /* running index: no division per element */
        buf[j] = w[k];
        if (++k == P)
            k = 0;
    }
    return buf;
}

#define FL_EL_RANGE(OP)                                                                        \
    static FL_CLONES void FL_N(fl_range_##OP)(void *vctx, int64_t b0, int64_t b1)              \
    {                                                                                          \
        const fl_el_ctx *c = vctx;                                                             \
        const T *z = c->z, *y = c->y;                                                          \
        T *g = c->g, *l = c->l;                                                                \
        double cs = FL_CAT2(fl_scale, OP)(c->scale);                                           \
        T ones[FL_BLOCK], wbuf[FL_BLOCK], pwbuf[FL_BLOCK];                                     \
        double lb[FL_BLOCK], gb[FL_BLOCK];                                                     \
        for (int j = 0; j < FL_BLOCK; j++)                                                     \
            ones[j] = 1;                                                                       \
        for (int64_t b = b0; b < b1; b++) {                                                    \
            int64_t i0 = (c->first + b) * FL_BLOCK;                                                       \
            int m = (int)(c->n - i0 < FL_BLOCK ? c->n - i0 : FL_BLOCK);                        \
            const T *restrict wp = FL_N(fl_periodic)(c->w, c->P, i0, m, wbuf, ones);           \
            const T *restrict pp = FL_N(fl_periodic)(c->pw, c->Ppw, i0, m, pwbuf, ones);       \
            const T *restrict zb = z + i0, *restrict yb = y + i0;                              \
            for (int j = 0; j < m; j++) {                                                      \
                double lv, gv, wv = wp[j];                                                     \
                fl_el_##OP(zb[j], yb[j], pp[j], cs, &lv, &gv);                                 \
                lb[j] = fl_mul0(wv, lv);                                                       \
                gb[j] = fl_mul0(wv, gv);                                                       \
            }                                                                                  \
            /* written after all reads of the block: grad may alias z */                      \
            if (g != NULL)                                                                     \
                for (int j = 0; j < m; j++)                                                    \
                    g[i0 + j] = (T)gb[j];                                                      \
            if (l != NULL)                                                                     \
                for (int j = 0; j < m; j++)                                                    \
                    l[i0 + j] = (T)lb[j];                                                      \
            c->partials[b] = fl_block_sum(lb, m);                                               \
        }                                                                                      \
    }

#ifndef FL_SCALES_DEFINED
#define FL_SCALES_DEFINED
/* MSE factor 2 folded into the scale (<= 2: no overflow) */
FL_INLINE double fl_scale_mse(double s) { return 2.0 * s; }
FL_INLINE double fl_scale_sigmoid_mse(double s) { return 2.0 * s; }
FL_INLINE double fl_scale_sigmoid_bce(double s) { return s; }
#endif

FL_EL_RANGE(mse)
FL_EL_RANGE(sigmoid_mse)
FL_EL_RANGE(sigmoid_bce)

static double FL_N(fl_call)(fl_range_fn range, const T *z, const T *y, const T *w, int64_t P,
                            const T *pw, int64_t Ppw, T *grad, T *loss, int64_t n, double scale)
{
    if (n <= 0)
        return 0.0;
    fl_el_ctx c = {z, y, w, pw, P, Ppw, n, grad, loss, scale, NULL, 0};
    return fl_run_elementwise(&c, range);
}

double FL_N(fl_mse)(const T *z, const T *y, const T *w, int64_t P, T *grad, T *loss, int64_t n, double scale)
{
    return FL_N(fl_call)(FL_N(fl_range_mse), z, y, w, P, NULL, 1, grad, loss, n, scale);
}

double FL_N(fl_sigmoid_mse)(const T *z, const T *y, const T *w, int64_t P, T *grad, T *loss, int64_t n,
                            double scale)
{
    return FL_N(fl_call)(FL_N(fl_range_sigmoid_mse), z, y, w, P, NULL, 1, grad, loss, n, scale);
}

double FL_N(fl_sigmoid_bce)(const T *z, const T *y, const T *w, int64_t P, const T *pw, int64_t Ppw,
                            T *grad, T *loss, int64_t n, double scale)
{
    return FL_N(fl_call)(FL_N(fl_range_sigmoid_bce), z, y, w, P, pw, Ppw, grad, loss, n, scale);
}

#undef FL_EL_RANGE
#undef FL_N
#undef FL_CAT
#undef FL_CAT2
