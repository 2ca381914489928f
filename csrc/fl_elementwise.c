/* Elementwise fused loss+gradient kernels: mse, sigmoid_mse, sigmoid_bce.
 *
 * Mirrors fastloss/reference.py.  The per-element math is written once, in
 * float64 (fl_el_* below); fl_elementwise_impl.h instantiates the blocked,
 * threaded drivers for float32 and float64.
 *
 * Determinism: the input is cut into fixed FL_BLOCK-element blocks; each
 * block's loss is summed in a fixed order into its own partial, and the
 * partials are added in block order, whatever the thread count.
 */
#include "fastloss.h"
#include "fl_math.h"
#include "fl_parallel.h"
#include "fl_stream.h"

#include <stdlib.h>

#define FL_BLOCK 1024
#define FL_MIN_PER_THREAD 64  /* blocks (64 Ki elements) before a thread pays off */

/* Each op returns the weighted loss w l and gradient c d(w l)/dz; c is the
 * scale (times 2 for the MSE ops, see fl_scale_*). */
FL_INLINE void fl_el_mse(double z, double y, double w, double pw, double c, int lp, double *l, double *g)
{
    (void)pw;
    (void)lp;
    double d = z - y;
    /* the weight goes in first: w d, then (w d) d and c (w d), so a small
     * weight cannot let d*d or 2*d overflow ahead of it */
    double wd = fl_mul0(w, d);
    *l = fl_mul0(wd, d);
    *g = c * wd;
}

FL_INLINE void fl_el_sigmoid_mse(double z, double y, double w, double pw, double c, int lp, double *l,
                                 double *g)
{
    (void)pw;
    double s, sn, e, big, h;
    if (lp)  /* float32 data (z is a float's exact value) */
        fl_sigmoid_pair_f32((float)z, &s, &sn, &e, &big, &h);
    else
        fl_sigmoid_pair(z, 0, &s, &sn, &e, &big, &h);
    /* s - y as (1 - y) - sigmoid(-z) for z >= 0: exact (1 - y) keeps every
     * digit of sigmoid(-z) at y = 1; near z = 0, (s - 1/2) + (1/2 - y) keeps
     * the digits of y = 1/2 (s rounds to 1/2 there) */
    double r = z >= 0 ? (1.0 - y) - sn : s - y;
    r = (z < FL_SMALL_Z && z > -FL_SMALL_Z) ? h + (0.5 - y) : r;
    *l = fl_mul0(w, r * r);
    /* s (1 - s) = e / (1 + e)^2, multiplied last: the tiny factor cannot
     * underflow ahead of the final product */
    *g = fl_mul0(w, (c * r) * ((e * big) * big));
}

FL_INLINE void fl_el_sigmoid_bce(double z, double y, double w, double pw, double c, int lp, double *l,
                                 double *g)
{
    double s, sn, e, big, h, L;  /* L: log1p(e), the shared tail of softplus(+-z) */
    if (lp) {  /* float32 data (z is a float's exact value) */
        fl_sigmoid_pair_f32((float)z, &s, &sn, &e, &big, &h);
        L = fl_log1p_small_f32(e);
    } else {
        fl_sigmoid_pair(z, 0, &s, &sn, &e, &big, &h);
        L = fl_log1p_small(e, big, 0);
    }
    double a = pw * y, b = 1.0 - y;
    double sp_pos = (z > 0 ? z : 0.0) + L, sp_neg = (z < 0 ? -z : 0.0) + L;
    /* a softplus(-z) + b softplus(z): both terms >= 0, no cancellation */
    *l = fl_mul0(w, fl_mul0(a, sp_neg) + fl_mul0(b, sp_pos));
    /* b s - a sn: exact limits at +-inf, y = 1 -> -sn and y = 0 -> s exact;
     * near z = 0, with s = 1/2 + h: (b - a)/2 + h (a + b) keeps y = 1/2 */
    double gz = b * s - a * sn;
    gz = (z < FL_SMALL_Z && z > -FL_SMALL_Z) ? 0.5 * (b - a) + h * (a + b) : gz;
    *g = fl_mul0(w, c * gz);
}

typedef struct {
    const void *z, *y, *w, *pw;
    int64_t P, Ppw, n;
    void *g, *l;
    double scale;
    double *partials;  /* partials[b]: block first + b of the chunk being run */
    int64_t first;     /* first block of the chunk being run */
    int stream;        /* write grad by streaming stores (fl_stream.h) */
} fl_el_ctx;

/* Blocks go in chunks of FL_CHUNK whose partials live on the stack (no
 * malloc to fail); chunk by chunk, partials are added in block order. */
#define FL_CHUNK 4096
static double fl_run_elementwise(fl_el_ctx *c, fl_range_fn range)
{
    int64_t nb = (c->n + FL_BLOCK - 1) / FL_BLOCK;
    double partials[FL_CHUNK], total = 0.0;
    for (int64_t b0 = 0; b0 < nb; b0 += FL_CHUNK) {
        int64_t k = nb - b0 < FL_CHUNK ? nb - b0 : FL_CHUNK;
        c->partials = partials;
        c->first = b0;
        fl_parallel_for(range, c, k, FL_MIN_PER_THREAD);
        for (int64_t b = 0; b < k; b++)
            total += partials[b];
    }
    return total;
}

/* MSE factor 2 folded into the scale (<= 2: no overflow) */
FL_INLINE double fl_scale_mse(double s) { return 2.0 * s; }
FL_INLINE double fl_scale_sigmoid_mse(double s) { return 2.0 * s; }
FL_INLINE double fl_scale_sigmoid_bce(double s) { return s; }

#define T float
#define SFX f32
#include "fl_elementwise_impl.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "fl_elementwise_impl.h"
#undef T
#undef SFX
