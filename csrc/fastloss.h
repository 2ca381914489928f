/* fastloss C interface: the single source of truth.
 *
 * csrc/build_ffi.py hands the text between the FL_CDEF markers to
 * cffi's cdef(), so the Python binding can never drift from the C code.
 * Only plain declarations may appear between the markers (cdef does not
 * run the preprocessor).
 *
 * Conventions (the backend kernel interface of fastloss/reference.py):
 * arrays are C-contiguous caller buffers; NULL means "not given".
 * Elementwise kernels read z, y (n values) and optional periodic
 * parameters w, pw of length P (n % P == 0; element i uses w[i % P]),
 * fill grad (scale * d(w_i l_i)/dz_i) and loss (w_i l_i) when non-NULL,
 * and return the float64 sum of w_i l_i (deterministic for any thread
 * count).  grad may be z itself.  Softmax kernels take z (R, C), exactly
 * one of labels (R,) int64 and probs (R, C), optional class weights w (C,),
 * always fill loss (R,) float64 and fill grad (R, C) when non-NULL; grad may
 * be z itself; they return the float64 sum of loss (one fixed order).
 */
#ifndef FASTLOSS_H
#define FASTLOSS_H

#include <stdint.h>

/* FL_CDEF_BEGIN */
#define FL_ABI_VERSION 2

int fl_abi_version(void);
/* Threads used for large inputs; n <= 0 restores the default
 * (FASTLOSS_NUM_THREADS, else the CPUs this process may run on).
 * Returns the previous setting (0 = default). */
int fl_set_num_threads(int n);
int fl_get_num_threads(void);
/* Instruction set of the kernels in use: 4 AVX-512, 3 AVX2+FMA, 0 portable
 * (FASTLOSS_C_ISA=base|avx2|avx512 caps it, read once). */
int fl_isa_level(void);
/* Internal (tests and benchmarks; not public API): gradients of at least
 * this many bytes are written with streaming (non-temporal) stores, which
 * skip reading the lines they write (x86-64; the bits are the same either
 * way).  n < 0 restores the default; returns the previous threshold.  The
 * tests set 0 to force the streaming path on tiny arrays, and INT64_MAX to
 * turn it off, and compare the bits. */
int64_t fl_set_stream_min_bytes(int64_t n);
int64_t fl_get_stream_min_bytes(void);

double fl_mse_f32(const float *z, const float *y, const float *w, int64_t P,
                  float *grad, float *loss, int64_t n, double scale);
double fl_mse_f64(const double *z, const double *y, const double *w, int64_t P,
                  double *grad, double *loss, int64_t n, double scale);
double fl_sigmoid_mse_f32(const float *z, const float *y, const float *w, int64_t P,
                          float *grad, float *loss, int64_t n, double scale);
double fl_sigmoid_mse_f64(const double *z, const double *y, const double *w, int64_t P,
                          double *grad, double *loss, int64_t n, double scale);
double fl_sigmoid_bce_f32(const float *z, const float *y, const float *w, int64_t P,
                          const float *pw, int64_t Ppw,
                          float *grad, float *loss, int64_t n, double scale);
double fl_sigmoid_bce_f64(const double *z, const double *y, const double *w, int64_t P,
                          const double *pw, int64_t Ppw,
                          double *grad, double *loss, int64_t n, double scale);

double fl_softmax_cross_entropy_f32(const float *z, int64_t R, int64_t C,
                                  const int64_t *labels, const float *probs,
                                  const float *w, int64_t ignore_index, double smoothing,
                                  float *grad, double *loss, double scale);
double fl_softmax_cross_entropy_f64(const double *z, int64_t R, int64_t C,
                                  const int64_t *labels, const double *probs,
                                  const double *w, int64_t ignore_index, double smoothing,
                                  double *grad, double *loss, double scale);
double fl_softmax_mse_f32(const float *z, int64_t R, int64_t C,
                        const int64_t *labels, const float *probs,
                        const float *w, int64_t ignore_index,
                        float *grad, double *loss, double scale);
double fl_softmax_mse_f64(const double *z, int64_t R, int64_t C,
                        const int64_t *labels, const double *probs,
                        const double *w, int64_t ignore_index,
                        double *grad, double *loss, double scale);
/* FL_CDEF_END */

#endif
