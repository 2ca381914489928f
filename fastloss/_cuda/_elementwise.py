"""Elementwise kernels (mse, sigmoid_mse, sigmoid_bce) on the GPU.

Layers: scalar device math (:mod:`._math`) -> grid-stride kernel writing
per-element loss/grad and one float64 partial per block -> ``*_dev``
launcher on device arrays -> host ``elementwise`` (copy in/out).

Each kernel is specialised by closure constants (op, which optional arrays
exist), so absent options cost nothing; absent arrays are passed as 1-element
dummies.  Math is float64 whatever the storage dtype (float16/32/64).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from ._math import SMALL_Z, half_tanh, mul0, sigmoid_pair, softplus
from ._reduce import MAX_BLOCKS, THREADS, USE_SHFL, block_ops, device_sum, grid_for, shared_size

OPS = ("mse", "sigmoid_mse", "sigmoid_bce")


@functools.lru_cache(maxsize=None)
def kernel_py(op, has_w, has_pw, want_grad, want_loss, threads, shfl):
    """Python source of one specialised elementwise kernel (for jit or PTX)."""
    if op not in OPS:
        raise ValueError(f"unknown elementwise op {op!r}")
    code = OPS.index(op)
    bsum, _ = block_ops(shfl)
    size = shared_size(threads)

    def elementwise_kernel(z, y, w, pw, grad, loss, scale, partials):
        buf = cuda.shared.array(size, float64)
        n = z.size
        nw = w.size
        npw = pw.size
        c = 2.0 * scale  # MSE factor 2 folded into the scale (<= 2: no overflow)
        acc = 0.0
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < n:
            zi = float64(z[i])
            yi = float64(y[i])
            small = abs(zi) < SMALL_Z  # False for NaN
            if code == 0:
                d = zi - yi
                # the weight goes in first (w d, then (w d) d and c (w d)):
                # a small weight cannot let d*d or 2*d overflow ahead of it
                wd = mul0(float64(w[i] if nw == n else w[i % nw]), d) if has_w else d
                l = mul0(wd, d)
                g = c * wd
            elif code == 1:
                if small:
                    # (s - 1/2) + (1/2 - y): y = 1/2 keeps the digits of tanh(z/2)/2
                    r = half_tanh(zi) + (0.5 - yi)
                else:
                    s, sn = sigmoid_pair(zi)
                    # s - y as (1 - y) - sigmoid(-z) for z >= 0: y = 1 keeps sn's digits
                    r = (1.0 - yi) - sn if zi >= 0 else s - yi
                l = r * r
                e = math.exp(-abs(zi))
                # s (1 - s) = e / (1 + e)^2, the tiny factor last: no intermediate underflow
                g = (c * r) * (e / ((1.0 + e) * (1.0 + e)))
            else:
                a = yi * float64(pw[i] if npw == n else pw[i % npw]) if has_pw else yi
                b = 1.0 - yi
                # two non-negative terms: no cancellation; zero coefficients mask inf
                l = mul0(a, softplus(-zi)) + mul0(b, softplus(zi))
                if small:
                    # s = 1/2 + h: (b - a)/2 + h (a + b) keeps y = 1/2 near z = 0
                    g = 0.5 * (b - a) + half_tanh(zi) * (a + b)
                else:
                    s, sn = sigmoid_pair(zi)
                    # b*s - a*sn: exact at y in {0, 1} and at z = +-inf
                    g = b * s - a * sn
                g = scale * g
            if has_w and code != 0:
                wi = float64(w[i] if nw == n else w[i % nw])  # skip the 64-bit modulo when P == n
                l = mul0(wi, l)
                g = mul0(wi, g)
            if want_loss:
                loss[i] = l
            if want_grad:
                grad[i] = g  # z[i] was read above: grad may alias z
            acc += l
            i += stride
        acc = bsum(acc, buf)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = acc

    return elementwise_kernel


@functools.lru_cache(maxsize=None)
def _kernel(op, has_w, has_pw, want_grad, want_loss):
    return cuda.jit(kernel_py(op, has_w, has_pw, want_grad, want_loss, THREADS, USE_SHFL))


def elementwise_dev(op, z, y, w, pw, grad, loss, scale, stream=0):
    """Run ``op`` on 1-D device arrays; returns the float64 sum of the losses.

    ``w``/``pw``/``grad``/``loss`` may be None.  ``y``, ``w``, ``pw`` may have
    any real dtype (cast in the kernel); ``grad``/``loss`` are stored in their
    own dtype.  The sum is deterministic: fixed grid, block trees, then one
    fixed-order block over the per-block partials.  Everything is queued on
    ``stream`` (the caller's stream for PyTorch/CuPy arrays).
    """
    n = z.size
    if n == 0:
        return 0.0
    blocks = grid_for(n)
    partials = cuda.device_array(blocks, dtype=np.float64, stream=stream)
    dummy = cuda.device_array(1, dtype=z.dtype, stream=stream)  # stands in for absent arrays
    kern = _kernel(op, w is not None, pw is not None and op == "sigmoid_bce", grad is not None, loss is not None)
    kern[blocks, THREADS, stream](z, y, dummy if w is None else w, dummy if pw is None else pw,
                                  dummy if grad is None else grad, dummy if loss is None else loss,
                                  float(scale), partials)
    return device_sum(partials, stream)


def elementwise(op, z, y, w, pw, grad, loss, scale):
    """Host kernel interface (see :mod:`fastloss.reference`): copy in, run, copy out."""
    dz = cuda.to_device(z)
    dy = cuda.to_device(y)
    dw = None if w is None else cuda.to_device(w)
    dpw = None if pw is None else cuda.to_device(pw)
    dg = None if grad is None else cuda.device_array(grad.shape, dtype=grad.dtype)
    dl = None if loss is None else cuda.device_array(loss.shape, dtype=loss.dtype)
    total = elementwise_dev(op, dz, dy, dw, dpw, dg, dl, scale)
    if dg is not None:
        dg.copy_to_host(grad)  # grad may be z: z is no longer needed
    if dl is not None:
        dl.copy_to_host(loss)
    return total


__all__ = ["OPS", "kernel_py", "elementwise_dev", "elementwise", "MAX_BLOCKS"]
