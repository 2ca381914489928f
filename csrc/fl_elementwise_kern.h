/* Instantiated by fl_elementwise_impl.h per dtype T and ISA variant VAR
 * (function attributes FL_ATTR): the blocked loops of the three ops. */
#define FL_V(name) FL_CAT(FL_N(name), VAR)
/* float32 results need less than float64 accuracy from exp/log */
#define FL_LOWP (sizeof(T) == 4)
#define FL_SW_PUT FL_CAT(fl_sw_put, VAR)

/* Block [i0, i0+m) element parameters: w[i % P] as a contiguous pointer,
 * expanded into buf when P does not cover the block contiguously. */
FL_INLINE const T *FL_V(fl_periodic)(const T *w, int64_t P, int64_t i0, int m, T *buf, const T *ones)
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

/* The common call -- no weights, gradient out, no per-element losses: the
 * gradient is stored as T in the main loop (no double buffer and second
 * pass).  grad is either z itself or disjoint from it (the contract; the
 * Python layer refuses partial overlaps): in place, one pointer is read and
 * written at the same index, so both variants vectorise alike, with the
 * same arithmetic as the general loop (weights 1 multiply exactly). */
#define FL_EL_PLAIN(OP)                                                                        \
    FL_INLINE void FL_V(fl_plain_in_##OP)(T *zg, const T *restrict yb, double *restrict lb, int m, \
                                          double cs)                                           \
    {                                                                                          \
        for (int j = 0; j < m; j++) {                                                          \
            double gj;                                                                         \
            fl_el_##OP(zg[j], yb[j], 1.0, 1.0, cs, FL_LOWP, &lb[j], &gj);                     \
            zg[j] = (T)gj;                                                                     \
        }                                                                                      \
    }                                                                                          \
    FL_INLINE void FL_V(fl_plain_out_##OP)(const T *restrict zb, const T *restrict yb,         \
                                           T *restrict gb, double *restrict lb, int m, double cs) \
    {                                                                                          \
        for (int j = 0; j < m; j++) {                                                          \
            double gj;                                                                         \
            fl_el_##OP(zb[j], yb[j], 1.0, 1.0, cs, FL_LOWP, &lb[j], &gj);                     \
            gb[j] = (T)gj;                                                                     \
        }                                                                                      \
    }

#define FL_EL_RANGE(OP, PLAIN, STREAM)                                                         \
    FL_EL_PLAIN(OP)                                                                            \
    static FL_ATTR void FL_V(fl_range_##OP)(void *vctx, int64_t b0, int64_t b1)              \
    {                                                                                          \
        const fl_el_ctx *c = vctx;                                                             \
        const T *z = c->z, *y = c->y;                                                          \
        T *g = c->g, *l = c->l;                                                                \
        double cs = FL_CAT2(fl_scale, OP)(c->scale);                                           \
        fl_sw sw; /* streaming: the gradient goes by blocks through tb (in L1) */              \
        T tb[FL_BLOCK];                                                                        \
        fl_sw_init(&sw);                                                                       \
        if (PLAIN && c->w == NULL && c->pw == NULL && l == NULL && g != NULL) {                \
            double lb[FL_BLOCK];                                                               \
            for (int64_t b = b0; b < b1; b++) {                                                \
                int64_t i0 = (c->first + b) * FL_BLOCK;                                        \
                int m = (int)(c->n - i0 < FL_BLOCK ? c->n - i0 : FL_BLOCK);                    \
                if (STREAM && (c->stream || sizeof(T) == 8)) {                                 \
                    /* float64 goes through tb below the threshold too, copied   */           \
                    /* out by plain stores: writing g in the math loop ran       */           \
                    /* 1.2-1.35x slower at 2^14-2^20 (likely 4 KiB aliasing: z,  */           \
                    /* y and g sit at one offset within their pages)             */           \
                    FL_V(fl_plain_out_##OP)(z + i0, y + i0, tb, lb, m, cs);                    \
                    if (c->stream)                                                             \
                        FL_SW_PUT(&sw, g + i0, tb, (size_t)m * sizeof(T));                     \
                    else                                                                       \
                        memcpy(g + i0, tb, (size_t)m * sizeof(T));                             \
                } else if (g == z)                                                             \
                    FL_V(fl_plain_in_##OP)(g + i0, y + i0, lb, m, cs);                         \
                else                                                                           \
                    FL_V(fl_plain_out_##OP)(z + i0, y + i0, g + i0, lb, m, cs);                \
                c->partials[b] = fl_sum(lb, m);                                                \
            }                                                                                  \
            if (STREAM && c->stream)                                                           \
                fl_sw_end(&sw);                                                                \
            return;                                                                            \
        }                                                                                      \
        T ones[FL_BLOCK], wbuf[FL_BLOCK], pwbuf[FL_BLOCK];                                     \
        double lb[FL_BLOCK], gb[FL_BLOCK];                                                     \
        for (int j = 0; j < FL_BLOCK; j++)                                                     \
            ones[j] = 1;                                                                       \
        for (int64_t b = b0; b < b1; b++) {                                                    \
            int64_t i0 = (c->first + b) * FL_BLOCK;                                                       \
            int m = (int)(c->n - i0 < FL_BLOCK ? c->n - i0 : FL_BLOCK);                        \
            const T *restrict wp = FL_V(fl_periodic)(c->w, c->P, i0, m, wbuf, ones);           \
            const T *restrict pp = FL_V(fl_periodic)(c->pw, c->Ppw, i0, m, pwbuf, ones);       \
            const T *restrict zb = z + i0, *restrict yb = y + i0;                              \
            for (int j = 0; j < m; j++) {                                                      \
                fl_el_##OP(zb[j], yb[j], wp[j], pp[j], cs, FL_LOWP, &lb[j], &gb[j]);         \
            }                                                                                  \
            /* written after all reads of the block: grad may alias z */                      \
            if (STREAM && g != NULL && c->stream) {                                            \
                for (int j = 0; j < m; j++)                                                    \
                    tb[j] = (T)gb[j];                                                          \
                FL_SW_PUT(&sw, g + i0, tb, (size_t)m * sizeof(T));                             \
            } else if (g != NULL)                                                              \
                for (int j = 0; j < m; j++)                                                    \
                    g[i0 + j] = (T)gb[j];                                                      \
            if (l != NULL)                                                                     \
                for (int j = 0; j < m; j++)                                                    \
                    l[i0 + j] = (T)lb[j];                                                      \
            c->partials[b] = fl_sum(lb, m);                                                     \
        }                                                                                      \
        if (STREAM && c->stream)                                                               \
            fl_sw_end(&sw);                                                                    \
    }


/* The plain loop only for mse: for the sigmoid ops (gcc 12, AVX-512) the
 * float store in the math loop measured ~15% slower than the double buffer
 * and its conversion pass.  Streaming stores only for mse, the one
 * memory-bound op: the sigmoid ops (2-5 ns/element) gained nothing with
 * out= and lost 5-18% (float64) on fresh gradients (csrc/README.md). */
FL_EL_RANGE(mse, 1, 1)
FL_EL_RANGE(sigmoid_mse, 0, 0)
FL_EL_RANGE(sigmoid_bce, 0, 0)

#undef FL_EL_RANGE
#undef FL_EL_PLAIN
#undef FL_V
#undef FL_LOWP
#undef FL_SW_PUT
