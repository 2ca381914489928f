"""Scalar device math shared by every CUDA kernel (float64 in, float64 out).

Mirrors the building blocks of :mod:`fastloss.reference`; float32 inputs are
widened to float64, computed, and rounded once when stored.
"""
from __future__ import annotations

import math

from numba import cuda


@cuda.jit(device=True, inline=True)
def sigmoid_pair(z):
    """``(sigmoid(z), sigmoid(-z))``; the small one is never ``1 - big``."""
    e = math.exp(-abs(z))  # in [0, 1]: cannot overflow
    big = 1.0 / (1.0 + e)
    small = e / (1.0 + e)  # subnormal when e is: kept, not flushed
    if z >= 0:
        return big, small
    return small, big


#: below this |z|, sigmoid(z) - 1/2 is formed as tanh(z/2)/2: sigmoid(z)
#: itself rounds to 1/2 for |z| < 2**-54 and would give s - y = 0 at y = 1/2
SMALL_Z = 1.0


@cuda.jit(device=True, inline=True)
def half_tanh(z):
    """``sigmoid(z) - 1/2 = tanh(z/2)/2``, ~1 ulp for tiny z."""
    return 0.5 * math.tanh(0.5 * z)


@cuda.jit(device=True, inline=True)
def softplus(z):
    """``log(1 + exp(z))`` without overflow; exact ``log1p`` tail for z << 0."""
    # NaN fails z > 0 and propagates through exp/log1p
    return (z if z > 0 else 0.0) + math.log1p(math.exp(-abs(z)))


@cuda.jit(device=True, inline=True)
def mul0(coef, value):
    """``coef * value`` with ``0 * inf := 0``: a zero weight/target masks."""
    return coef * value if coef != 0 else 0.0
