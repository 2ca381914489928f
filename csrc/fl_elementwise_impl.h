/* Instantiated by fl_elementwise.c for T = float (SFX f32) and double (f64). */
#define FL_N(name) FL_CAT(name, SFX)

#define FL_KERN_FILE "fl_elementwise_kern.h"
#include "fl_variants.h"
#undef FL_KERN_FILE

static double FL_N(fl_call)(fl_range_fn range, const T *z, const T *y, const T *w, int64_t P,
                            const T *pw, int64_t Ppw, T *grad, T *loss, int64_t n, double scale, int stream)
{
    if (n <= 0)
        return 0.0;
    fl_el_ctx c = {z, y, w, pw, P, Ppw, n, grad, loss, scale, NULL, 0,
                   stream && grad != NULL && fl_stream_use(n * (int64_t)sizeof(T))};
    return fl_run_elementwise(&c, range);
}

double FL_N(fl_mse)(const T *z, const T *y, const T *w, int64_t P, T *grad, T *loss, int64_t n, double scale)
{
    return FL_N(fl_call)(FL_PICK(FL_N(fl_range_mse)), z, y, w, P, NULL, 1, grad, loss, n, scale, 1);
}

double FL_N(fl_sigmoid_mse)(const T *z, const T *y, const T *w, int64_t P, T *grad, T *loss, int64_t n,
                            double scale)
{
    return FL_N(fl_call)(FL_PICK(FL_N(fl_range_sigmoid_mse)), z, y, w, P, NULL, 1, grad, loss, n, scale, 0);
}

double FL_N(fl_sigmoid_bce)(const T *z, const T *y, const T *w, int64_t P, const T *pw, int64_t Ppw,
                            T *grad, T *loss, int64_t n, double scale)
{
    return FL_N(fl_call)(FL_PICK(FL_N(fl_range_sigmoid_bce)), z, y, w, P, pw, Ppw, grad, loss, n, scale, 0);
}

#undef FL_PICK
#undef FL_N
