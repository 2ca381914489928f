/* Instantiated by fl_softmax.c for T = float (SFX f32) and double (f64). */
#define FL_N(name) FL_CAT(name, SFX)

#define FL_KERN_FILE "fl_softmax_kern.h"
#include "fl_variants.h"
#undef FL_KERN_FILE

static void FL_N(fl_softmax)(fl_sm_ctx *c)
{
    if (c->R <= 0 || c->C <= 0)
        return;
    if (c->labels != NULL && c->probs == NULL && c->w == NULL && c->smoothing == 0.0
        && c->C <= FL_SMALL_C) {  /* plain calls of either op on short rows: blocks of FL_RB rows */
        int64_t per = FL_ROW_MIN_PER_THREAD / (c->C * FL_RB);
        fl_parallel_for(FL_PICK(FL_N(fl_rows_small)), c, (c->R + FL_RB - 1) / FL_RB, per < 1 ? 1 : per);
        return;
    }
    int64_t per = FL_ROW_MIN_PER_THREAD / c->C;
    fl_parallel_for(FL_PICK(FL_N(fl_rows)), c, c->R, per < 1 ? 1 : per);
}

double FL_N(fl_softmax_cross_entropy)(const T *z, int64_t R, int64_t C, const int64_t *labels, const T *probs,
                                      const T *w, int64_t ignore_index, double smoothing, T *grad, double *loss,
                                      double scale)
{
    fl_sm_ctx c = {z, probs, w, labels, R, C, ignore_index, smoothing, grad, loss, scale, 0};
    FL_N(fl_softmax)(&c);
    return fl_rows_total(loss, R);
}

double FL_N(fl_softmax_mse)(const T *z, int64_t R, int64_t C, const int64_t *labels, const T *probs,
                            const T *w, int64_t ignore_index, T *grad, double *loss, double scale)
{
    fl_sm_ctx c = {z, probs, w, labels, R, C, ignore_index, 0.0, grad, loss, scale, 1};
    FL_N(fl_softmax)(&c);
    return fl_rows_total(loss, R);
}

#undef FL_N
#undef FL_PICK
