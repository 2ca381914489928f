"""Elementwise losses: one fused pass reads z, y (, w, pw) and writes grad.

Layout: the input is cut into fixed chunks of :data:`CHUNK` elements (the
unit of parallel work) and each chunk into blocks of :data:`BLOCK` (the unit
held in L1).  A block's per-element losses go to a small buffer and are
summed in float64 in a fixed order; chunk sums are added in chunk order.
The reduced loss is therefore bitwise identical for any thread count, on the
serial and parallel paths and with or without a gradient, in place or not
(``tests/test_numba_backend.py``).

float32 inputs take float32 exp/log1p and a float32 division refined in
float64 (:func:`._math.sigmoid_parts_f32`): twice the vector width where the
time goes, one float64 rounding at the end.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit, jit_inline, kernel, parallel_kernel
from ._math import SMALL_Z, is_f32, log1p01, log1p01_f32, mul0, sigmoid_parts, sigmoid_parts_f32, tree_sum

BLOCK = 1024  # a power of 4: the block sum is a 4-way tree
CHUNK = 16 * BLOCK
MSE, SIGMOID_MSE, SIGMOID_BCE = 0, 1, 2
_TINY_E = 2.0 ** -25


@jit
def _fill_periodic(buf, a, i0, nb):
    """``buf[t] = a[(i0 + t) % P]`` without a division per element."""
    P = a.size
    j = i0 % P
    for t in range(nb):
        buf[t] = a[j]
        j += 1
        if j == P:
            j = 0


@jit_inline
def _elem(op, plain, f32, zt, yt, wt, pt, scale, c2):
    """One element's weighted loss and gradient (float64 values)."""
    zi = np.float64(zt)
    yi = np.float64(yt)
    wi = 1.0 if plain else np.float64(wt)
    if op == MSE:
        d = zi - yi
        # the weight goes in first (w d, then (w d) d and c (w d)): a
        # small weight cannot let d*d or 2*d overflow ahead of it
        wd = mul0(wi, d)
        li = mul0(wd, d)
        gi = c2 * wd
    elif op == SIGMOID_MSE:
        s, sn, e, h = sigmoid_parts_f32(zt) if f32 else sigmoid_parts(zi)
        # z >= 0: (1 - y) is exact near y = 1 and keeps sigmoid(-z);
        # |z| < 1: (s - 1/2) + (1/2 - y) keeps y = 1/2's digits (a select)
        r = ((1.0 - yi) - sn) if zi >= 0 else (s - yi)
        r = (h + (0.5 - yi)) if abs(zi) < SMALL_Z else r
        li = mul0(wi, r * r)
        # s (1 - s) = e / (1 + e)^2, multiplied last: no early underflow
        big = s if zi >= 0 else sn  # 1 / (1 + e)
        gi = mul0(wi, (c2 * r) * (e * (big * big)))
    else:
        s, sn, e, h = sigmoid_parts_f32(zt) if f32 else sigmoid_parts(zi)
        ai = yi if plain else np.float64(pt) * yi
        bi = 1.0 - yi
        if f32:  # log1p(e) = e (1 - e/2): below 2**-25 e itself is < 1/2 float32 ulp off
            l1 = e if e < _TINY_E else np.float64(log1p01_f32(np.float32(e)))
        else:
            l1 = log1p01(e)  # softplus(+-z) = max(+-z, 0) + log1p(exp(-|z|))
        sp_neg = (-zi if zi < 0 else 0.0) + l1
        sp_pos = (zi if zi > 0 else 0.0) + l1
        li = mul0(wi, mul0(ai, sp_neg) + mul0(bi, sp_pos))  # terms >= 0: no cancel
        # b s - a sn has exact limits at +-inf; near 0, with s = 1/2 + h,
        # (b - a)/2 + h (a + b) keeps y = 1/2's digits (a select)
        gz = (0.5 * (bi - ai) + h * (ai + bi)) if abs(zi) < SMALL_Z else (bi * s - ai * sn)
        gi = mul0(wi, scale * gz)
    return li, gi


@jit_inline
def _chunk(op, plain, z, y, w, pw, grad, loss, scale, c):
    """Process chunk ``c``; return its float64 loss sum.

    ``plain`` (a constant) is the common call -- no weights, gradient out, no
    per-element losses: with those known at compile time the loop carries no
    weight loads, masks or conditional stores (~40% faster for sigmoid ops).
    """
    n = z.size
    i_lo = c * CHUNK
    i_hi = min(n, i_lo + CHUNK)
    # Block weights in z's dtype: the loop reads src[off + t] from one
    # array either way, with no conditional load to block vectorising.
    wb = np.ones(BLOCK, z.dtype)  # 1.0 multiplies exactly
    pb = np.ones(BLOCK, z.dtype)
    full_w = False if plain else w.size == n
    full_pw = False if plain else pw.size == n
    has_g = True if plain else grad.size > 0
    has_l = False if plain else loss.size > 0
    c2 = 2.0 * scale  # MSE factor 2 folded into the scale
    f32 = is_f32(z)  # constant: float32 transcendentals for float32 inputs
    # A block's losses go to a buffer in z's dtype and are summed in a fixed
    # order, the same in every kernel variant: the reduced loss has the same
    # bits with or without a gradient, in place or not.  (A float64 value
    # carried in a float32 loop -- a store or a running sum -- would cap
    # LLVM's vector width at 4 lanes.)  A float32 loss above float32's range
    # makes the block sum inf: that block is summed again in float64 from z
    # and y.
    lb = np.empty(BLOCK, np.float64 if op == MSE else z.dtype)  # mse: float64 math anyway
    ovf = f32 and op != MSE  # a float32 loss buffer can overflow
    # General calls stage the gradient and copy it (and the losses) out after
    # the block: the math loop then stores only to local buffers.  Outputs
    # that may lie over z or y and are stored under a runtime flag made LLVM
    # keep the loop scalar (float64 loss-only calls ran 5x slower), and the
    # float64 redo of an overflowed block still needs z and y intact.
    gs = np.empty(0 if plain else BLOCK, z.dtype)
    tmp = np.empty(BLOCK // 4)
    acc = 0.0
    for b0 in range(i_lo, i_hi, BLOCK):
        nb = min(BLOCK, i_hi - b0)
        if not plain and w.size > 0 and not full_w:
            _fill_periodic(wb, w, b0, nb)
        if not plain and pw.size > 0 and not full_pw:
            _fill_periodic(pb, pw, b0, nb)
        # Block views indexed from 0: LLVM then sees consecutive addresses
        # (with i = b0 + t numba's negative-index wraparound forces gathers).
        zb = z[b0:b0 + nb]
        yb = y[b0:b0 + nb]
        wv = w[b0:b0 + nb] if full_w else wb
        pv = pw[b0:b0 + nb] if full_pw else pb
        gb = grad[b0:b0 + nb] if has_g else grad
        lv = loss[b0:b0 + nb] if has_l else loss
        if plain:  # gradient straight out: plain calls never alias z or y
            for t in range(nb):
                li, gi = _elem(op, plain, f32, zb[t], yb[t], 0.0, 0.0, scale, c2)
                lb[t] = li
                gb[t] = gi
        else:
            for t in range(nb):
                li, gi = _elem(op, plain, f32, zb[t], yb[t], wv[t], pv[t], scale, c2)
                lb[t] = li
                gs[t] = gi
        bs = tree_sum(lb, nb, tmp)  # pads lb past nb only
        if ovf and bs == np.inf:  # overflowed float32 (or a true inf): redo in float64
            bs = 0.0
            for t in range(nb):
                bs += _elem(op, plain, f32, zb[t], yb[t], 0.0 if plain else wv[t], 0.0 if plain else pv[t],
                            scale, c2)[0]
        acc += bs
        if has_g and not plain:
            for t in range(nb):  # (an explicit loop: slice assignment measured slower)
                gb[t] = gs[t]
        if has_l:
            for t in range(nb):
                lv[t] = lb[t]
    return acc


# One kernel per (op, plain), each passing both as constants: after inlining
# their branches fold, and every kernel is a separate top-level function so
# numba's on-disk cache keeps one entry per kernel (factory closures share a
# qualified name and would collide in the cache index).  Serial: all chunks
# in order on the calling thread.  Parallel: chunks over numba's threads, the
# same per-chunk sums, added in chunk order by the caller.
@kernel
def mse_serial(z, y, w, pw, grad, loss, scale, nchunks):
    total = 0.0
    for c in range(nchunks):
        total += _chunk(MSE, False, z, y, w, pw, grad, loss, scale, c)
    return total


@parallel_kernel
def mse_parallel(z, y, w, pw, grad, loss, scale, partial):
    for c in prange(partial.size):
        partial[c] = _chunk(MSE, False, z, y, w, pw, grad, loss, scale, c)


@kernel
def mse_plain_serial(z, y, w, pw, grad, loss, scale, nchunks):
    total = 0.0
    for c in range(nchunks):
        total += _chunk(MSE, True, z, y, w, pw, grad, loss, scale, c)
    return total


@parallel_kernel
def mse_plain_parallel(z, y, w, pw, grad, loss, scale, partial):
    for c in prange(partial.size):
        partial[c] = _chunk(MSE, True, z, y, w, pw, grad, loss, scale, c)


@kernel
def sigmoid_mse_serial(z, y, w, pw, grad, loss, scale, nchunks):
    total = 0.0
    for c in range(nchunks):
        total += _chunk(SIGMOID_MSE, False, z, y, w, pw, grad, loss, scale, c)
    return total


@parallel_kernel
def sigmoid_mse_parallel(z, y, w, pw, grad, loss, scale, partial):
    for c in prange(partial.size):
        partial[c] = _chunk(SIGMOID_MSE, False, z, y, w, pw, grad, loss, scale, c)


@kernel
def sigmoid_mse_plain_serial(z, y, w, pw, grad, loss, scale, nchunks):
    total = 0.0
    for c in range(nchunks):
        total += _chunk(SIGMOID_MSE, True, z, y, w, pw, grad, loss, scale, c)
    return total


@parallel_kernel
def sigmoid_mse_plain_parallel(z, y, w, pw, grad, loss, scale, partial):
    for c in prange(partial.size):
        partial[c] = _chunk(SIGMOID_MSE, True, z, y, w, pw, grad, loss, scale, c)


@kernel
def sigmoid_bce_serial(z, y, w, pw, grad, loss, scale, nchunks):
    total = 0.0
    for c in range(nchunks):
        total += _chunk(SIGMOID_BCE, False, z, y, w, pw, grad, loss, scale, c)
    return total


@parallel_kernel
def sigmoid_bce_parallel(z, y, w, pw, grad, loss, scale, partial):
    for c in prange(partial.size):
        partial[c] = _chunk(SIGMOID_BCE, False, z, y, w, pw, grad, loss, scale, c)


@kernel
def sigmoid_bce_plain_serial(z, y, w, pw, grad, loss, scale, nchunks):
    total = 0.0
    for c in range(nchunks):
        total += _chunk(SIGMOID_BCE, True, z, y, w, pw, grad, loss, scale, c)
    return total


@parallel_kernel
def sigmoid_bce_plain_parallel(z, y, w, pw, grad, loss, scale, partial):
    for c in prange(partial.size):
        partial[c] = _chunk(SIGMOID_BCE, True, z, y, w, pw, grad, loss, scale, c)


#: op -> ((serial, parallel) general, (serial, parallel) plain)
KERNELS = {
    "mse": ((mse_serial, mse_parallel), (mse_plain_serial, mse_plain_parallel)),
    "sigmoid_mse": ((sigmoid_mse_serial, sigmoid_mse_parallel),
                    (sigmoid_mse_plain_serial, sigmoid_mse_plain_parallel)),
    "sigmoid_bce": ((sigmoid_bce_serial, sigmoid_bce_parallel),
                    (sigmoid_bce_plain_serial, sigmoid_bce_plain_parallel)),
}
