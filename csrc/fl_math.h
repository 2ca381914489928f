/* Scalar math shared by every kernel: written once, inlined everywhere.
 *
 * Plain arithmetic and integer bit tricks only (no libm calls), so gcc can
 * vectorise the loops that use them without -ffast-math, and inf/NaN and
 * subnormal behaviour stays exact.  Everything is float64; float32 kernels
 * widen, compute here and round once.
 */
#ifndef FL_MATH_H
#define FL_MATH_H

#include <stdint.h>
#include <string.h>

/* Runtime dispatch (x86-64 + GCC): every kernel loop is compiled three
 * times -- portable, x86-64-v3 (AVX2+FMA) and x86-64-v4 (AVX-512, 512-bit
 * vectors) -- and fl_isa() picks one per process.  FASTLOSS_C_NATIVE builds
 * define FL_NO_CLONES and compile only the -march=native one. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FL_NO_CLONES)
#define FL_MULTI_ISA 1
#define FL_ATTR_V3 __attribute__((target("arch=x86-64-v3")))
#define FL_ATTR_V4 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#endif

/* 4: AVX-512, 3: AVX2+FMA, 0: portable; capped by FASTLOSS_C_ISA. */
int fl_isa(void);

#define FL_CAT2(a, b) a##_##b
#define FL_CAT(a, b) FL_CAT2(a, b)

/* the math must inline into the vectorised loops */
#define FL_INLINE static inline __attribute__((always_inline))

FL_INLINE uint64_t fl_bits(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }
FL_INLINE double fl_from_bits(uint64_t u) { double x; memcpy(&x, &u, 8); return x; }

/* Fixed-order sum: lane q of 4 accumulators takes the elements j with
 * j % 4 == q, then a fixed tree.  GNU vector extensions keep the lanes in
 * one register (gcc may not reorder a plain sum); same order either way. */
#if defined(__GNUC__)
typedef double fl_v4 __attribute__((vector_size(32)));
#endif
FL_INLINE double fl_sum(const double *v, int64_t m)
{
    double acc[4] = {0, 0, 0, 0};
    int64_t j = 0;
#if defined(__GNUC__)
    fl_v4 a = {0, 0, 0, 0};
    for (; j + 4 <= m; j += 4) {
        fl_v4 x;
        memcpy(&x, v + j, sizeof x);
        a += x;
    }
    memcpy(acc, &a, sizeof a);
#endif
    for (; j + 4 <= m; j += 4)
        for (int q = 0; q < 4; q++)
            acc[q] += v[j + q];
    for (; j < m; j++)
        acc[j & 3] += v[j];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/* Pairwise sum of v[0..m), m >= 1, in place (v is scratch): error ~log2(m)
 * ulp of the sum of |v|, for sums whose result may cancel (softmax_mse V)
 * over long rows; one fixed order.  Inline and non-recursive, so it is
 * compiled with each ISA variant's flags (no out-of-line SSE call from
 * AVX-512 code). */
FL_INLINE double fl_pairwise_inplace(double *v, int64_t m)
{
    while (m > 1) {
        int64_t h = m >> 1;
        for (int64_t i = 0; i < h; i++)
            v[i] = v[2 * i] + v[2 * i + 1];
        if (m & 1)
            v[h] = v[m - 1];
        m = h + (m & 1);
    }
    return v[0];
}

/* coef * v with 0 * inf := 0 (a zero weight or target coefficient masks
 * exactly).  An AND with a compare mask, not a branch: gcc would otherwise
 * turn the select into masked loads of the inputs of v. */
FL_INLINE double fl_mul0(double coef, double v)
{
    uint64_t keep = (uint64_t)0 - (uint64_t)(coef != 0);
    return fl_from_bits(fl_bits(coef * v) & keep);
}

/* exp(x) for x <= 0 (or NaN): every caller only needs the non-positive
 * half, which cannot overflow.  ~1 ulp; subnormal results rounded once.
 * lp (a compile-time constant after inlining): accurate enough for a
 * float32 result only, with a shorter polynomial.  *em1 gets expm1(x), to
 * ~2 ulp for -1 <= x <= 0 only (from the same reduction: 2^k P1 + (2^k - 1)
 * with k in {-1, 0} there); it is dead code for callers that ignore it. */
FL_INLINE double fl_exp_nonpos_m1(double x, int lp, double *em1)
{
    const double shifter = 0x1.8p52;  /* adding it rounds to an integer in the low bits */
    /* exp(-746) < 2^-1075 rounds to 0: clamping also maps -inf there; NaN
     * fails the comparison and stays NaN. */
    double xc = x < -746.0 ? -746.0 : x;
    double kd = xc * 0x1.71547652b82fep0 + shifter;
    int64_t k = (int64_t)(fl_bits(kd) - fl_bits(shifter));  /* round(x/ln2), in [-1077, 0] */
    kd -= shifter;
    /* Cody-Waite: ln2 split so kd*LN2_HI is exact; |r| <= ln2/2 */
    double r = (xc - kd * 0x1.62e42fefa3800p-1) - kd * 0x1.ef35793c7673p-45;
    /* Taylor polynomial: degree 13 (truncation < 2^-57 on |r| <= ln2/2); for
     * float32 results degree 8 (< 2^-32: still rounds once to the float) */
    double p;
    if (lp) {
        p = 1.0 / 40320.0;
    } else {
        p = 1.0 / 6227020800.0;
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
    }
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    double p1 = p * r;  /* expm1(r): exact r for tiny r, no 1 + r rounding */
    p = p * r + 1.0;
    /* 2^k in two normal factors: the first product is exact, the second
     * rounds once into the subnormal range instead of flushing. */
    int64_t k1 = -(int64_t)((uint64_t)(-k) >> 1);
    int64_t k2 = k - k1;
    double s1 = fl_from_bits((uint64_t)(k1 + 1023) << 52);
    double s2 = fl_from_bits((uint64_t)(k2 + 1023) << 52);
    /* k = -1: 0.5 P1 - 0.5 with |0.5 P1| < 0.21, no cancellation */
    *em1 = s2 * p1 + (s2 - 1.0);
    return (p * s1) * s2;
}

FL_INLINE double fl_exp_nonpos(double x, int lp)
{
    double em1;
    return fl_exp_nonpos_m1(x, lp, &em1);
}

/* log(u) for u >= 1 finite, plus a correction term c added last (fdlibm
 * style reduction to m in [sqrt(1/2), sqrt(2)), atanh series in s). */
FL_INLINE double fl_log_ge1_plus(double u, double c, int lp)
{
    uint64_t t = fl_bits(u) - 0x3fe6a09e667f3bcdULL;   /* >= 0 for u >= sqrt(1/2) */
    uint64_t k = t >> 52;
    double m = fl_from_bits(fl_bits(u) - (k << 52));
    double kd = fl_from_bits(0x4330000000000000ULL + k) - 0x1p52;  /* exact int -> double */
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    /* R = 2z/3 + 2z^2/5 + ...: log(1+f) = f - hfsq + s (hfsq + R); 10 terms
     * (float32 results: 5, truncation < 2^-34) */
    double R;
    if (lp) {
        R = 2.0 / 11.0;
    } else {
        R = 2.0 / 21.0;
        R = R * z + 2.0 / 19.0;
        R = R * z + 2.0 / 17.0;
        R = R * z + 2.0 / 15.0;
        R = R * z + 2.0 / 13.0;
        R = R * z + 2.0 / 11.0;
    }
    R = R * z + 2.0 / 9.0;
    R = R * z + 2.0 / 7.0;
    R = R * z + 2.0 / 5.0;
    R = R * z + 2.0 / 3.0;
    R = R * z;
    double hfsq = 0.5 * f * f;
    /* small terms first, f and k ln2 last: keeps ~1 ulp near u = 1 */
    return kd * 0x1.62e42fefa3800p-1
           - (((hfsq - (s * (hfsq + R) + (kd * 0x1.ef35793c7673p-45 + c)))) - f);
}

/* log1p(x) for x >= 0, +inf or NaN: log(1+x) with the rounding error of
 * 1+x put back, so tiny (even subnormal) x returns x exactly. */
FL_INLINE double fl_log1p_nonneg(double x)
{
    double u = 1.0 + x;
    double c = (x - (u - 1.0)) / u;
    double r = fl_log_ge1_plus(u < 0x1p1023 ? u : 1.0, c, 0);
    return x < __builtin_inf() ? r : x;  /* +inf -> +inf, NaN -> NaN */
}

/* Below this |z|, sigmoid(z) - 1/2 is used as h = tanh(z/2)/2 (reference
 * SMALL_Z): sigmoid(z) itself rounds to 1/2 for |z| < 2^-54. */
#define FL_SMALL_Z 1.0

/* sigmoid(z) and sigmoid(-z), each ~1 ulp; sigmoid(-z) is never formed as
 * 1 - sigmoid(z) (that rounds to 0 for z > 37 and zeroes s(1-s)).  Also
 * returns e = exp(-|z|), big = 1/(1+e) (for softplus and s(1-s)) and
 * h = sigmoid(z) - 1/2, valid for |z| < FL_SMALL_Z only. */
FL_INLINE void fl_sigmoid_pair(double z, int lp, double *s, double *sn, double *e_out, double *big_out,
                               double *h_out)
{
    double az = z < 0 ? -z : z;
    double em1;
    double e = fl_exp_nonpos_m1(-az, lp, &em1);  /* in [0, 1]: cannot overflow */
    double big = 1.0 / (1.0 + e);
    double small = e * big;         /* e/(1+e), subnormal when e is: kept */
    int pos = z >= 0;
    *s = pos ? big : small;
    *sn = pos ? small : big;
    *e_out = e;
    *big_out = big;
    /* tanh(|z|/2) = (1 - e)/(1 + e) = -expm1(-|z|) * big: exact digits for
     * tiny z (no 1 - e cancellation) and no second division */
    double th = 0.5 * (-em1 * big);
    *h_out = z < 0 ? -th : th;
}

/* ---- float32 inputs: float32 polynomials (twice the vector width), the
 * rest in double so the result is rounded once (mirrors the numba backend's
 * _math.exp_em1_f32 / sigmoid_parts_f32 / log1p01_f32). ---- */

/* expm1(r) - r in float for |r| <= 0.347: r^2 times the Taylor series to
 * degree 7 (truncation < 0.1 float ulp) */
FL_INLINE float fl_em1_tail_f32(float r)
{
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    return (p * r) * r;
}

/* exp(x) and expm1(x) for float x <= 0 as double *values*: the float
 * mantissa times an exact double 2^k, so results below float's normal range
 * keep 24 bits.  < 1 float ulp; *em1 only for -1 <= x <= 0.  Clamped at -200:
 * exp(-200) times the largest float weight still rounds to 0 in float. */
FL_INLINE double fl_exp_nonpos_m1_f32(float x, double *em1)
{
    const float shifter = 0x1.8p23f;
    float xc = x < -200.0f ? -200.0f : x;  /* NaN fails the test and passes */
    float kf = (xc * 0x1.715476p0f + shifter) - shifter;
    /* reduction and leading term r in double, only the correction r^2 P(r)
     * (<= 0.17 of the result) in float: expm1 within 1 float ulp */
    double kd = (double)kf;
    double r = ((double)xc - kd * 0x1.62e42fefa3800p-1) - kd * 0x1.ef35793c7673p-45;  /* |r| <= 0.347 */
    float rf = (float)r;
    double pm = (double)fl_em1_tail_f32(rf) + r;  /* expm1(r) */
    int64_t k = kf == kf ? (int64_t)kf : 0;  /* NaN: any k (pm is NaN) */
    double sc = fl_from_bits((uint64_t)(k + 1023) << 52);
    *em1 = sc * pm + (sc - 1.0);
    double e = (pm + 1.0) * sc;
    return xc == -200.0f ? 0.0 : e;  /* exp(-inf) = 0 exactly */
}

/* exp(z - m) 2^100 in float arithmetic for floats z <= m (softmax rows of
 * float32 logits, m the row max; numba's _math.exp_scaled_f32 plus the
 * rounding error of z - m), ~1 float ulp.  The 2^100 keeps e normal down to
 * z - m = -156; below -150 the result is 0 (e / S < 2^-216 rounds to 0 in
 * float and is nothing next to S >= 1).  NaN never comes here (NaN rows are
 * handled apart).  *em1 gets expm1(z - m) 2^100 (~1 float ulp) where *near:
 * the reduction's k is 0 (z - m >= -ln2/2 up to rounding), 2^k = 1 and
 * expm1 is the polynomial itself; dead code for callers that ignore it. */
FL_INLINE float fl_exp_scaled_m1_f32(float z, float m, float *em1, int *near)
{
    const float shifter = 0x1.8p23f;  /* adding it rounds to an integer */
    float x = z - m;
    /* TwoSum: x + dx = z - m exactly (z - m rounds by up to |x| 2^-24, which
     * e would inherit relative; finite z, m whenever x >= -150) */
    float bv = x - z;
    float dx = (z - (x - bv)) - (m + bv);
    int big = x >= -150.0f;
    float xc = big ? x : -150.0f;
    float kf = (xc * 0x1.715476p0f + shifter) - shifter;
    /* ln2 = 0.693359375 - 2.12194440e-4: kf * the high part is exact */
    float r = (xc - kf * 0.693359375f) + (dx - kf * -2.12194440e-4f);  /* |r| <= 0.347 */
    float pm = fl_em1_tail_f32(r) + r;  /* expm1(r): small terms before the leading 1 */
    int32_t sb = ((int32_t)kf + 227) * (1 << 23);  /* 2^(k + 100), k >= -217: normal */
    float sc;
    memcpy(&sc, &sb, 4);
    float e = (pm + 1.0f) * sc;
    *em1 = pm * 0x1p100f;
    *near = kf == 0.0f;
    return big ? e : 0.0f;
}

FL_INLINE float fl_exp_scaled_f32(float z, float m)
{
    float em1;
    int near;
    return fl_exp_scaled_m1_f32(z, m, &em1, &near);
}

/* ---- softmax_mse's near set (fl_softmax_kern.h): classes with z - m >=
 * -ln2/2 keep E = expm1(z - m), whose digits 1 + E would round off.  The
 * exp pass stores one tagged value per class: near classes |E| (sign bit
 * clear, a tie +0), the rest -e (sign bit set, an underflowed e -0); both
 * read back as -v.  The sign decides membership once per row, for every
 * later pass. ---- */
#define FL_HALF_LN2 0x1.62e42fefa39efp-2

/* The tagged value of x = z - m <= 0 (not NaN): expm1 from the exp
 * reduction, ~2 ulp for -1 <= x <= 0. */
FL_INLINE double fl_exp_tag(double x)
{
    double em1;
    double e = fl_exp_nonpos_m1(x, 0, &em1);
    return x >= -FL_HALF_LN2 ? __builtin_fabs(em1) : -e;
}

/* The tagged value times 2^100 for float z <= m (float32 rows): near means
 * the float reduction's k is 0 (z - m >= -ln2/2 up to rounding). */
FL_INLINE float fl_exp_tag_f32(float z, float m)
{
    float em1;
    int near;
    float e = fl_exp_scaled_m1_f32(z, m, &em1, &near);
    return near ? __builtin_fabsf(em1) : -e;
}

/* Whether a tagged value is a near class: the sign bit clear (one integer
 * compare per vector) */
FL_INLINE int fl_is_near(double v) { return (int64_t)fl_bits(v) >= 0; }

/* Sum of float v[0..m) in double, fixed order: lane q of two 8-lane
 * accumulators takes j % 16 == q (resp. 8 + q), then a fixed tree (as
 * fl_sum, with enough lanes to keep up with float loads). */
#if defined(__GNUC__)
typedef double fl_v8 __attribute__((vector_size(64)));
typedef float fl_f8 __attribute__((vector_size(32)));
#endif
FL_INLINE double fl_sum_f32(const float *v, int64_t m)
{
    double acc[16] = {0};
    int64_t j = 0;
#if defined(__GNUC__)
    fl_v8 a = {0}, b = {0};
    for (; j + 16 <= m; j += 16) {
        fl_f8 x, y;
        memcpy(&x, v + j, sizeof x);
        memcpy(&y, v + j + 8, sizeof y);
        a += __builtin_convertvector(x, fl_v8);
        b += __builtin_convertvector(y, fl_v8);
    }
    memcpy(acc, &a, sizeof a);
    memcpy(acc + 8, &b, sizeof b);
#endif
    for (; j + 16 <= m; j += 16)
        for (int q = 0; q < 16; q++)
            acc[q] += (double)v[j + q];
    for (; j < m; j++)
        acc[j & 15] += (double)v[j];
    for (int q = 0; q < 8; q++)
        acc[q] += acc[q + 8];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* softmax_mse row sums from tagged values v[0..n) (see fl_exp_tag; e esc
 * = esc - v on the near set N, -v elsewhere (F); E esc = -v on N), in
 * double: s[0] = sum_N e, s[1] = sum_F e (times esc), s[2] = sum_N e E,
 * s[3] = sum_F e^2 (times esc^2); with targets t (has_t) s[4] = sum_N w t,
 * s[5] = sum_N w t E (times esc); with weights w (has_w) s[6] = sum_N w e
 * (times esc), s[7] = sum_N w e E (times esc^2), where w = 1 without
 * weights.  f32, has_w, has_t: constants after inlining; w, t and v are
 * float when f32, else double.  Fixed order: lane q of 16 takes j % 16 ==
 * q, then a fixed tree (as fl_sum_f32); below 16 entries, in order.  Callers keep n small (a block) and add
 * block partials pairwise: sums of long rows stay accurate. */
#if defined(__GNUC__)
typedef int64_t fl_i8 __attribute__((vector_size(64)));
/* 8 entries of v (float or double) as doubles; through a pointer, not a
 * return value (a 64-byte vector return trips gcc's -Wpsabi note) */
FL_INLINE void fl_load8(fl_v8 *x, const void *v, int64_t j, int f32)
{
    if (f32) {
        fl_f8 xf;
        memcpy(&xf, (const float *)v + j, sizeof xf);
        *x = __builtin_convertvector(xf, fl_v8);
    } else {
        memcpy(x, (const double *)v + j, sizeof *x);
    }
}
#endif
FL_INLINE double fl_ld(const void *v, int64_t j, int f32)
{
    return f32 ? (double)((const float *)v)[j] : ((const double *)v)[j];
}
/* one step of 8 entries at j into the 8 accumulators (see fl_near_sums) */
#if defined(__GNUC__)
FL_INLINE void fl_near_step(const void *v, const void *w, const void *t, int64_t j, int f32, double esc, int has_w,
                            int has_t, fl_v8 *a)
{
    const fl_v8 ev = {esc, esc, esc, esc, esc, esc, esc, esc};
    fl_v8 x, wv = {1, 1, 1, 1, 1, 1, 1, 1}, tv = {0};
    fl_load8(&x, v, j, f32);
    fl_i8 nr = (fl_i8)x >= 0;  /* -1 on near lanes: the sign bit clear */
    /* masks of -x, not of x: gcc 12 ICEs on the bitwise AND of a
     * converted float load in the AVX2 variant */
    fl_v8 nx = -x;
    fl_v8 En = (fl_v8)(nr & (fl_i8)nx), ef = (fl_v8)(~nr & (fl_i8)nx);  /* E esc on N, e esc off N */
    fl_v8 en = (fl_v8)(nr & (fl_i8)ev) + En;                          /* e esc on N */
    a[0] += en;
    a[1] += ef;
    a[2] += en * En;
    a[3] += ef * ef;
    if (has_w)
        fl_load8(&wv, w, j, f32);
    if (has_t) {
        fl_load8(&tv, t, j, f32);
        /* unweighted: a product with the 0/1 mask (the ICE above) */
        fl_v8 wt = has_w ? (fl_v8)(nr & (fl_i8)(wv * tv)) : tv * (fl_v8)(nr & (fl_i8)(fl_v8){1, 1, 1, 1, 1, 1, 1, 1});
        a[4] += wt;
        a[5] += wt * En;
    }
    if (has_w) {
        fl_v8 we = wv * en;
        a[6] += we;
        a[7] += we * En;
    }
}
#endif
/* The 8 terms of entry j for fl_near_sums (scalar: short rows and tails). */
FL_INLINE void fl_near_terms(const void *v, const void *w, const void *t, int64_t j, int f32, double esc,
                             int has_w, int has_t, double r[8])
{
    double x = fl_ld(v, j, f32);
    int nr = fl_is_near(x);
    double e = nr ? esc - x : -x;
    double en = nr ? e : 0.0, En = nr ? -x : 0.0;
    double wk = has_w ? fl_ld(w, j, f32) : 1.0;
    double wt = nr && has_t ? wk * fl_ld(t, j, f32) : 0.0;
    r[0] = en;
    r[1] = nr ? 0.0 : e;
    r[2] = en * En;
    r[3] = nr ? 0.0 : e * e;
    r[4] = wt;
    r[5] = wt * En;
    r[6] = wk * en;
    r[7] = (wk * en) * En;
}
FL_INLINE void fl_near_sums(const void *v, const void *w, const void *t, int64_t n, int f32, double esc, int has_w,
                            int has_t, double s[8])
{
    if (n < 16) {  /* short rows: in order, no lanes to zero and fold */
        for (int i = 0; i < 8; i++)
            s[i] = 0.0;
        for (int64_t j = 0; j < n; j++) {
            double r[8];
            fl_near_terms(v, w, t, j, f32, esc, has_w, has_t, r);
            for (int i = 0; i < 8; i++)
                s[i] += r[i];
        }
        return;
    }
    double a[8][16] = {{0}};
    int64_t j = 0;
#if defined(__GNUC__)
    /* two sets of accumulators (lanes j % 16 < 8, >= 8): two add chains */
    fl_v8 A[8] = {{0}}, B[8] = {{0}};
    for (; j + 16 <= n; j += 16) {
        fl_near_step(v, w, t, j, f32, esc, has_w, has_t, A);
        fl_near_step(v, w, t, j + 8, f32, esc, has_w, has_t, B);
    }
    for (int i = 0; i < 8; i++) {
        memcpy(a[i], &A[i], sizeof A[i]);
        memcpy(a[i] + 8, &B[i], sizeof B[i]);
    }
#endif
    for (; j < n; j++) {
        double r[8];
        fl_near_terms(v, w, t, j, f32, esc, has_w, has_t, r);
        for (int i = 0; i < 8; i++)
            a[i][j & 15] += r[i];
    }
    for (int i = 0; i < 8; i++) {
        for (int q = 0; q < 8; q++)
            a[i][q] += a[i][q + 8];
        s[i] = ((a[i][0] + a[i][1]) + (a[i][2] + a[i][3])) + ((a[i][4] + a[i][5]) + (a[i][6] + a[i][7]));
    }
}

/* log1p(u) for float u in [0, 1] (or NaN) in float arithmetic, ~1 ulp:
 * u >= 1/2 goes through ln2 + log1p((u - 1)/2) (exact, Sterbenz), then the
 * atanh series in t = 2v/(2+v), 5 terms for |t| <= 0.29. */
FL_INLINE float fl_log1p01_f32(float u)
{
    int hi = u >= 0.5f;
    float v = hi ? u * 0.5f - 0.5f : u;
    float t = v / (1.0f + 0.5f * v);
    float s2 = 0.25f * t * t;
    float q = 1.0f / 11.0f;
    q = q * s2 + 1.0f / 9.0f;
    q = q * s2 + 1.0f / 7.0f;
    q = q * s2 + 1.0f / 5.0f;
    q = q * s2 + 1.0f / 3.0f;
    float y = t + t * (s2 * q);
    return hi ? 0.693359375f + (y + -2.12194440e-4f) : y;
}

/* fl_sigmoid_pair for a float z: exp and the division in float, then
 * 1/(1+e) refined by one double Newton step (error squared, ~1e-14) so only
 * e's own float rounding reaches the results; no double division. */
FL_INLINE void fl_sigmoid_pair_f32(float z, double *s, double *sn, double *e_out, double *big_out,
                                   double *h_out)
{
    float az = z < 0 ? -z : z;
    double em1;
    double e = fl_exp_nonpos_m1_f32(-az, &em1);
    double b0 = (double)(1.0f / (1.0f + (float)e));
    double big = b0 * (2.0 - (1.0 + e) * b0);  /* 1 + e exact in double */
    double small = e * big;
    int pos = z >= 0;
    *s = pos ? big : small;
    *sn = pos ? small : big;
    *e_out = e;
    *big_out = big;
    double th = 0.5 * (-em1 * big);
    *h_out = z < 0 ? -th : th;
}

/* log1p(e) for e = exp(-|z|) of a float z (a double value, see above):
 * below 2^-25, log1p(e) = e (1 - e/2) is e within half a float ulp. */
FL_INLINE double fl_log1p_small_f32(double e)
{
    return e < 0x1p-25 ? e : (double)fl_log1p01_f32((float)e);
}

/* log1p(e) for e = exp(-|z|) in [0, 1], given big = 1/(1+e): the rounding
 * correction of 1+e reuses big instead of a second division.  softplus(z)
 * = max(z, 0) + this. */
FL_INLINE double fl_log1p_small(double e, double big, int lp)
{
    double u = 1.0 + e;
    return fl_log_ge1_plus(u, (e - (u - 1.0)) * big, lp);
}


/* Square tile transposes d[j ds + r] = s[r ss + j] (n x n, strides in
 * elements) by shuffles: gcc does not vectorise a strided copy with a
 * runtime stride.  Loads and stores through memcpy (unaligned, no
 * aliasing assumptions); the shuffles are the unpack / 128-bit-lane steps
 * of the usual SSE/AVX transposes, so each maps to one instruction. */
#if defined(__GNUC__) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FL_HAVE_TILES 1
typedef float fl_t8f __attribute__((vector_size(32)));
typedef float fl_t4f __attribute__((vector_size(16)));
typedef double fl_t4d __attribute__((vector_size(32)));
typedef double fl_t2d __attribute__((vector_size(16)));
#define FL_SV __builtin_shufflevector
/* a vector load as its own statement: loads in a loop over an array of
 * vectors went through a stack copy in the AVX2 variant */
#define FL_LD(VT, p) __extension__({ VT v_; memcpy(&v_, (p), sizeof v_); v_; })

FL_INLINE void fl_tile8_f32(const float *restrict s, int64_t ss, float *restrict d, int64_t ds)
{
    fl_t8f r[8] = {FL_LD(fl_t8f, s), FL_LD(fl_t8f, s + ss), FL_LD(fl_t8f, s + 2 * ss), FL_LD(fl_t8f, s + 3 * ss),
                   FL_LD(fl_t8f, s + 4 * ss), FL_LD(fl_t8f, s + 5 * ss), FL_LD(fl_t8f, s + 6 * ss),
                   FL_LD(fl_t8f, s + 7 * ss)};
    fl_t8f t[8], u[8];
    for (int q = 0; q < 8; q += 2) {  /* unpacklo / unpackhi of row pairs */
        t[q] = FL_SV(r[q], r[q + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[q + 1] = FL_SV(r[q], r[q + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int q = 0; q < 8; q += 4) {  /* 64-bit pairs: classes j and j + 4 of 4 rows */
        u[q] = FL_SV(t[q], t[q + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[q + 1] = FL_SV(t[q], t[q + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[q + 2] = FL_SV(t[q + 1], t[q + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[q + 3] = FL_SV(t[q + 1], t[q + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int q = 0; q < 4; q++) {  /* 128-bit halves: rows 0-3 with rows 4-7 */
        fl_t8f lo = FL_SV(u[q], u[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        fl_t8f hi = FL_SV(u[q], u[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        memcpy(d + q * ds, &lo, sizeof lo);
        memcpy(d + (q + 4) * ds, &hi, sizeof hi);
    }
}

FL_INLINE void fl_tile4_f32(const float *restrict s, int64_t ss, float *restrict d, int64_t ds)
{
    fl_t4f r[4] = {FL_LD(fl_t4f, s), FL_LD(fl_t4f, s + ss), FL_LD(fl_t4f, s + 2 * ss), FL_LD(fl_t4f, s + 3 * ss)};
    fl_t4f t[4];
    t[0] = FL_SV(r[0], r[1], 0, 4, 1, 5);
    t[1] = FL_SV(r[0], r[1], 2, 6, 3, 7);
    t[2] = FL_SV(r[2], r[3], 0, 4, 1, 5);
    t[3] = FL_SV(r[2], r[3], 2, 6, 3, 7);
    fl_t4f o0 = FL_SV(t[0], t[2], 0, 1, 4, 5), o1 = FL_SV(t[0], t[2], 2, 3, 6, 7);
    fl_t4f o2 = FL_SV(t[1], t[3], 0, 1, 4, 5), o3 = FL_SV(t[1], t[3], 2, 3, 6, 7);
    memcpy(d, &o0, sizeof o0);
    memcpy(d + ds, &o1, sizeof o1);
    memcpy(d + 2 * ds, &o2, sizeof o2);
    memcpy(d + 3 * ds, &o3, sizeof o3);
}

FL_INLINE void fl_tile4_f64(const double *restrict s, int64_t ss, double *restrict d, int64_t ds)
{
    fl_t4d r[4] = {FL_LD(fl_t4d, s), FL_LD(fl_t4d, s + ss), FL_LD(fl_t4d, s + 2 * ss), FL_LD(fl_t4d, s + 3 * ss)};
    fl_t4d t[4];
    t[0] = FL_SV(r[0], r[1], 0, 4, 2, 6);
    t[1] = FL_SV(r[0], r[1], 1, 5, 3, 7);
    t[2] = FL_SV(r[2], r[3], 0, 4, 2, 6);
    t[3] = FL_SV(r[2], r[3], 1, 5, 3, 7);
    fl_t4d o0 = FL_SV(t[0], t[2], 0, 1, 4, 5), o2 = FL_SV(t[0], t[2], 2, 3, 6, 7);
    fl_t4d o1 = FL_SV(t[1], t[3], 0, 1, 4, 5), o3 = FL_SV(t[1], t[3], 2, 3, 6, 7);
    memcpy(d, &o0, sizeof o0);
    memcpy(d + ds, &o1, sizeof o1);
    memcpy(d + 2 * ds, &o2, sizeof o2);
    memcpy(d + 3 * ds, &o3, sizeof o3);
}

FL_INLINE void fl_tile2_f64(const double *restrict s, int64_t ss, double *restrict d, int64_t ds)
{
    fl_t2d r0 = FL_LD(fl_t2d, s), r1 = FL_LD(fl_t2d, s + ss);
    fl_t2d o0 = FL_SV(r0, r1, 0, 2), o1 = FL_SV(r0, r1, 1, 3);
    memcpy(d, &o0, sizeof o0);
    memcpy(d + ds, &o1, sizeof o1);
}
#undef FL_SV
#undef FL_LD
#endif
#endif

#endif
