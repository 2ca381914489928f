"""Scalar float64 math written once, in plain arithmetic so LLVM vectorises it.

numba 0.68 has no SVML: ``math.exp``/``math.log1p`` inside a loop stay scalar
libm calls (~16 ns/element).  These polynomial versions compile to straight
vector code inside ``prange`` loops and keep the accuracy contract: ~1 ulp
over the whole domain, subnormal results kept, exact 0/inf/NaN behaviour
(``tests/test_numba_math.py`` sweeps them against NumPy in ulps).
"""
from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from ._jit import jit, jit_fma, jit_reassoc

_LOG2E = 1.4426950408889634
# ln 2 split so that k * _LN2_HI is exact for |k| < 2**11 (Cody-Waite).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# 1.5 * 2**52: adding and subtracting it rounds to the nearest integer with
# plain arithmetic (np.rint/floor would be a libm call or an int64 result).
_ROUND = 6755399441055744.0
_LN2 = 0.6931471805599453
_LN2_TAIL = 2.3190468138462996e-17  # ln 2 - _LN2


def is_f32(a):
    """Whether array ``a`` holds float32 (a compile-time constant in kernels)."""
    return a.dtype == np.float32


@overload(is_f32)
def _is_f32_impl(a):
    f32 = isinstance(a, types.Array) and a.dtype == types.float32
    return lambda a: f32


@jit_fma
def _exp_parts(x, f32):
    """``exp(x) = 2**k (1 + pm)``: return ``(pm, s1, s2)`` with ``2**k = s1 s2``."""
    # Clamp first so k stays in range; the clamp values still give the exact
    # limits (exp(-746) rounds to 0, exp(710) overflows), and NaN passes.
    if x < -746.0:
        x = -746.0
    if x > 710.0:
        x = 710.0
    kf = (x * _LOG2E + _ROUND) - _ROUND
    r = (x - kf * _LN2_HI) - kf * _LN2_LO  # |r| <= ln2/2, exact high part
    # Taylor to degree 13: truncation < 0.05 ulp on |r| <= 0.347.
    if f32:
        p = 1.0 / 5040.0
    else:
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    pm = (p * r) * r + r  # exp(r) - 1: small terms summed before the leading 1
    # NaN would make the int conversion undefined: use k = 0 (p is NaN anyway).
    k = np.int64(kf) if kf == kf else np.int64(0)
    # 2**k as two exact powers: a subnormal result is rounded once, at the end.
    k1 = k >> 1
    k2 = k - k1
    s1 = np.int64((k1 + 1023) << 52).view(np.float64)
    s2 = np.int64((k2 + 1023) << 52).view(np.float64)
    return pm, s1, s2


@jit
def exp(x, f32=False):
    """``exp(x)`` for float64 ``x``, ~1 ulp; 0 below -745.2, inf above 709.8.

    ``f32=True`` (a constant, for results rounded to float32) stops the
    series at degree 7: truncation 8e-9 relative, 0.1 float32 ulp.
    """
    pm, s1, s2 = _exp_parts(x, f32)
    return ((pm + 1.0) * s1) * s2


@jit_fma
def exp_em1(x, f32=False):
    """``(exp(x), expm1(x))``; the second is ~1 ulp only for ``|x| <= 1``.

    There k is -1, 0 or 1 and ``expm1 = 2**k pm + (2**k - 1)`` has no
    cancellation (|pm| <= 0.42), so the small-|z| sigmoid needs no second
    series.
    """
    pm, s1, s2 = _exp_parts(x, f32)
    sc = s1 * s2
    return ((pm + 1.0) * s1) * s2, sc * pm + (sc - 1.0)


@jit_fma
def exp_pm(x, f32=False):
    """``(exp(x), pm)`` with pm the reduced series ``expm1(r)``: ``expm1(x)``
    itself, ~1 ulp, where the reduction leaves ``r = x`` (k = 0, ``|x| <=
    0.3465``), with none of :func:`exp_em1`'s rescaling."""
    pm, s1, s2 = _exp_parts(x, f32)
    return ((pm + 1.0) * s1) * s2, pm


@jit_fma
def log1p01(u, f32=False):
    """``log1p(u)`` for ``u`` in [0, 1] (or NaN), ~1 ulp, exact for subnormal u.

    ``f32=True`` keeps 6 series terms: truncation 3e-10, for float32 results.
    """
    # u >= 1/2: log1p(u) = ln2 + log1p(v), v = (u - 1)/2 in [-1/4, 0], exact
    # (Sterbenz).  Keeps |t| <= 0.29 so the series needs 10 terms.
    hi = u >= 0.5
    v = (u * 0.5 - 0.5) if hi else u
    # t = 2v/(2+v) = 2 atanh^-1 argument; t == v exactly for tiny/subnormal v.
    t = v / (1.0 + 0.5 * v)
    s2 = 0.25 * t * t
    if f32:
        q = 1.0 / 13.0
    else:
        q = 1.0 / 23.0
        q = q * s2 + 1.0 / 21.0
        q = q * s2 + 1.0 / 19.0
        q = q * s2 + 1.0 / 17.0
        q = q * s2 + 1.0 / 15.0
        q = q * s2 + 1.0 / 13.0
    q = q * s2 + 1.0 / 11.0
    q = q * s2 + 1.0 / 9.0
    q = q * s2 + 1.0 / 7.0
    q = q * s2 + 1.0 / 5.0
    q = q * s2 + 1.0 / 3.0
    y = t + t * (s2 * q)  # log1p(v) = 2 atanh(t/2) = t (1 + s2/3 + s2^2/5 ...)
    if hi:
        y = (_LN2 + (y + _LN2_TAIL))
    return y


#: below this |z|, sigmoid(z) - 1/2 is formed as tanh(z/2)/2 (mirrors
#: fastloss.reference.SMALL_Z): sigmoid(z) itself rounds to 1/2 for tiny z.
SMALL_Z = 1.0


@jit
def sigmoid_parts(z, f32=False):
    """``(sigmoid(z), sigmoid(-z), e, h)`` from one ``exp``, each ~1 ulp.

    ``e = exp(-|z|)`` is for softplus.  ``sigmoid(-z)`` is never
    ``1 - sigmoid(z)``: that rounds to 0 for z > 37 and zeroes s(1-s).
    ``h = sigmoid(z) - 1/2 = tanh(z/2)/2``, <= 3 ulp for ``|z| < SMALL_Z``
    (meaningless beyond).
    """
    e, em1 = exp_em1(-abs(z), f32)  # e in [0, 1]: cannot overflow
    big = 1.0 / (1.0 + e)
    small = e * big  # subnormal when e is: kept, not flushed
    # tanh(|z|/2)/2 = -expm1(-|z|) / (2 (1 + e)), exact for tiny z; reusing
    # 1/(1 + e) saves a vector division (a 2 + expm1 divisor gains < 1 ulp)
    th = (-0.5 * em1) * big
    if z >= 0:
        return big, small, e, th
    return small, big, e, -th


# ---------------------------------------------------------------------------
# float32 inputs: the transcendental part in float32 (twice the vector width
# of float64), everything after it in float64 so the result is rounded once.
# ---------------------------------------------------------------------------
_F1 = np.float32(1.0)
_F32_LOG2E = np.float32(_LOG2E)
_F32_LN2_HI = np.float32(0.693359375)  # ln 2 = _F32_LN2_HI + _F32_LN2_LO (log1p)
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_ROUND = np.float32(12582912.0)  # 1.5 * 2**23: round to integer


@jit_fma
def _em1_tail_f32(r):
    """``expm1(r) - r`` in float32 for ``|r| <= 0.347``: r^2 times the Taylor
    series to degree 7 (truncation 5e-9 relative, < 0.1 float32 ulp)."""
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    return (p * r) * r


@jit_fma
def exp_em1_f32(x):
    """``(exp(x), expm1(x))`` for float32 ``x <= 0``: float32 polynomial, < 1 float32 ulp.

    Both come back as float64 *values*: the float32 mantissa times 2**k in
    float64, so results below float32's normal range keep 24 bits (a float32
    subnormal would keep only a few, and weights multiply that error).
    ``expm1`` only for ``|x| <= 1`` (k in {-1, 0}, as in :func:`exp_em1`).
    exp(-inf) = 0, NaN passes.
    """
    # Clamp: exp(-200) * the largest float32 weight still rounds to 0 in
    # float32 (2**-288 * 2**128); a NaN compares false and passes.
    if x < -200.0:
        x = np.float32(-200.0)
    kf = (x * _F32_LOG2E + _F32_ROUND) - _F32_ROUND
    # The reduction and the leading term r in float64 (exact enough), only
    # the correction r^2 P(r) (<= 0.17 of the result) in float32: expm1 for
    # |x| < 1 stays within 1 float32 ulp, as tanh(z/2)/2 needs.
    kd = np.float64(kf)
    r = (np.float64(x) - kd * _LN2_HI) - kd * _LN2_LO  # |r| <= 0.347
    rf = np.float32(r)
    pm = np.float64(_em1_tail_f32(rf)) + r  # expm1(r)
    k = np.int64(kf) if kf == kf else np.int64(0)  # NaN: any k (pm is NaN)
    sc = np.int64((k + 1023) << 52).view(np.float64)  # 2**k, exact in float64
    e = (pm + 1.0) * sc
    e = 0.0 if x == -200.0 else e  # exp(-inf) = 0 exactly
    return e, sc * pm + (sc - 1.0)


@jit_fma
def exp_em1_scaled_f32(x):
    """``(exp(x) * 2**100, expm1(x))`` in float32 arithmetic for float32 ``x <= 0``.

    The first is :func:`exp_scaled_f32`.  The second is the reduced series
    ``expm1(r)`` itself, < 1 float32 ulp, so it is ``expm1(x)`` only where
    the reduction leaves ``r = x`` (k = 0: ``x >= -0.3465``, inside -ln2/2);
    softmax_mse's near-max classes need exactly that range.
    """
    big = x >= -150.0  # NaN never reaches here (NaN rows are handled apart)
    x = x if big else np.float32(-150.0)
    kf = (x * _F32_LOG2E + _F32_ROUND) - _F32_ROUND
    r = (x - kf * _F32_LN2_HI) - kf * _F32_LN2_LO  # |r| <= 0.347
    pm = _em1_tail_f32(r) + r  # expm1(r)
    sc = np.int32((np.int32(kf) + 227) << 23).view(np.float32)  # 2**(k + 100), k >= -217
    e = (pm + _F1) * sc
    return (e if big else np.float32(0.0)), pm


@jit_fma
def exp_scaled_f32(x):
    """``exp(x) * 2**100`` in float32 arithmetic for float32 ``x <= 0`` (softmax rows), ~1 ulp.

    The 2**100 (the float32 rows' ``esc``) keeps e normal down to x = -156;
    below -150 the result is 0 (e / S < 2**-216 rounds to 0 in float32 and
    is nothing next to S >= 1).  ``x`` itself is a float32 difference z - m:
    its rounding moves e by at most |x| 2**-24, within the contract's
    condition number (kappa >= ~|z - m| for softmax probabilities).
    """
    return exp_em1_scaled_f32(x)[0]


@jit_fma
def log1p01_f32(u):
    """``log1p(u)`` in float32 arithmetic for float32 ``u`` in [0, 1] (or NaN), ~1 ulp.

    The float64 :func:`log1p01` with 5 series terms (|t| <= 0.29: truncation
    1e-9 relative).
    """
    hi = u >= 0.5
    v = (u * np.float32(0.5) - np.float32(0.5)) if hi else u
    t = v / (_F1 + np.float32(0.5) * v)
    s2 = np.float32(0.25) * t * t
    q = np.float32(1.0 / 11.0)
    q = q * s2 + np.float32(1.0 / 9.0)
    q = q * s2 + np.float32(1.0 / 7.0)
    q = q * s2 + np.float32(1.0 / 5.0)
    q = q * s2 + np.float32(1.0 / 3.0)
    y = t + t * (s2 * q)
    if hi:
        y = _F32_LN2_HI + (y + _F32_LN2_LO)
    return y


@jit_fma
def sigmoid_parts_f32(z):
    """:func:`sigmoid_parts` of a float32 ``z``, as float64 values, ~1 float32 ulp.

    ``e`` keeps float32 precision below float32's range (:func:`exp_em1_f32`).
    exp and the division run in float32; ``1/(1 + e)`` is then refined by one
    float64 Newton step (relative error squared: ~1e-14), so only e's own
    float32 rounding reaches the result, and no float64 division is needed.
    """
    e, em1 = exp_em1_f32(-abs(z))
    b0 = np.float64(_F1 / (_F1 + np.float32(e)))
    big = b0 * (2.0 - (1.0 + e) * b0)  # 1 + e is exact in float64
    small = e * big
    th = (-0.5 * em1) * big
    if z >= 0:
        return big, small, e, th
    return small, big, e, -th


@jit
def mul0(c, v):
    """``c * v`` with ``0 * inf := 0``: a zero weight or target masks."""
    return c * v if c != 0.0 else 0.0


@jit_reassoc
def add_reassoc(a, b):
    """A sum whose order LLVM may change *at compile time* so it vectorises.

    The order is fixed by the compiled code, not by threads: results stay
    bitwise reproducible for any thread count.
    """
    return a + b


@jit
def tree_sum(buf, nb, tmp):
    """Sum ``buf[:nb]`` in float64 in a fixed order: a 4-way tree over all of ``buf``.

    ``buf.size`` is a power of 4 (>= 4); ``buf`` is zero-padded past ``nb``
    here, so the tree has one shape for a given size; each level is a loop
    over disjoint quarters that vectorises (a lane-sequential sum stayed
    scalar: ~0.5 ns/element, this ~0.08).  ``tmp``: ``buf.size // 4``
    float64 scratch.  Sums of losses (>= 0 or NaN) are unchanged by the +0.0
    padding.
    """
    n = buf.size
    for t in range(nb, n):
        buf[t] = 0
    q = n // 4
    for j in range(q):
        tmp[j] = (np.float64(buf[j]) + np.float64(buf[j + q])) + \
                 (np.float64(buf[j + 2 * q]) + np.float64(buf[j + 3 * q]))
    while q > 1:  # quarters again: reads of tmp[j + q..] precede their writes
        q //= 4
        for j in range(q):
            tmp[j] = (tmp[j] + tmp[j + q]) + (tmp[j + 2 * q] + tmp[j + 3 * q])
    return tmp[0]
