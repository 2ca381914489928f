"""Deterministic block reductions and the fixed-order final reduction.

Two block-reduction flavours with the same fixed summation tree shape:
shared-memory trees (run under the CUDA simulator, which has no warp
shuffles) and warp shuffles (compiled for real GPUs).  No float atomics
anywhere: the same input on the same device always gives the same bits.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda, float64, int64

SIM = bool(config.ENABLE_CUDASIM)
#: warp shuffles exist only on real GPUs (the simulator lacks them)
USE_SHFL = not SIM
FULL_MASK = 0xFFFFFFFF
#: threads per block of the 1-D kernels; tiny under the (slow) simulator
THREADS = 32 if SIM else 256
#: fixed grid size of grid-stride kernels: per-block partials, then one block
MAX_BLOCKS = 4 if SIM else 1024


@cuda.jit(device=True, inline=True)
def block_sum_tree(v, buf):
    """Sum ``v`` over the block (power-of-two size) through shared ``buf``."""
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    r = buf[0]
    cuda.syncthreads()  # buf is reused by the next reduction
    return r


@cuda.jit(device=True, inline=True)
def block_maxarg_tree(v, i, buf, ibuf):
    """Block max of ``v`` and its smallest index ``i`` (first argmax)."""
    tid = cuda.threadIdx.x
    buf[tid] = v
    ibuf[tid] = i
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            ov = buf[tid + s]
            oi = ibuf[tid + s]
            if ov > buf[tid] or (ov == buf[tid] and oi < ibuf[tid]):
                buf[tid] = ov
                ibuf[tid] = oi
        cuda.syncthreads()
        s //= 2
    rv = buf[0]
    ri = ibuf[0]
    cuda.syncthreads()
    return rv, ri


@cuda.jit(device=True, inline=True)
def _warp_sum(v):
    off = 16
    while off > 0:
        v += cuda.shfl_down_sync(FULL_MASK, v, off)
        off //= 2
    return v


@cuda.jit(device=True, inline=True)
def block_sum_shfl(v, buf):
    """As :func:`block_sum_tree` with warp shuffles; ``buf`` holds >= 33."""
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    v = _warp_sum(v)
    if lane == 0:
        buf[warp] = v
    cuda.syncthreads()
    if warp == 0:
        v = buf[lane] if lane < (cuda.blockDim.x >> 5) else 0.0
        v = _warp_sum(v)
        if lane == 0:
            buf[32] = v  # a slot no warp partial uses
    cuda.syncthreads()
    r = buf[32]
    cuda.syncthreads()
    return r


@cuda.jit(device=True, inline=True)
def _warp_maxarg(v, i):
    off = 16
    while off > 0:
        ov = cuda.shfl_down_sync(FULL_MASK, v, off)
        oi = cuda.shfl_down_sync(FULL_MASK, i, off)
        if ov > v or (ov == v and oi < i):
            v = ov
            i = oi
        off //= 2
    return v, i


@cuda.jit(device=True, inline=True)
def block_maxarg_shfl(v, i, buf, ibuf):
    """As :func:`block_maxarg_tree` with warp shuffles."""
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    v, i = _warp_maxarg(v, i)
    if lane == 0:
        buf[warp] = v
        ibuf[warp] = i
    cuda.syncthreads()
    if warp == 0:
        if lane < (cuda.blockDim.x >> 5):
            v = buf[lane]
            i = ibuf[lane]
        else:
            v = -math.inf
            i = 1 << 62
        v, i = _warp_maxarg(v, i)
        if lane == 0:
            buf[32] = v
            ibuf[32] = i
    cuda.syncthreads()
    rv = buf[32]
    ri = ibuf[32]
    cuda.syncthreads()
    return rv, ri


def block_ops(shfl):
    """(block_sum, block_maxarg) for the shuffle or shared-memory flavour."""
    if shfl:
        return block_sum_shfl, block_maxarg_shfl
    return block_sum_tree, block_maxarg_tree


def shared_size(threads):
    """Shared slots a reduction needs: one per thread, >= 33 for shuffles."""
    return max(threads, 64)


@functools.lru_cache(maxsize=None)
def sum_kernel_py(threads, shfl):
    """Python source of the one-block fixed-order sum of a 1-D array."""
    bsum, _ = block_ops(shfl)
    size = shared_size(threads)

    def sum_all(a, out):
        buf = cuda.shared.array(size, float64)
        acc = 0.0
        i = cuda.threadIdx.x
        while i < a.size:  # each thread: a fixed strided subsequence, in order
            acc += float64(a[i])
            i += threads
        acc = bsum(acc, buf)
        if cuda.threadIdx.x == 0:
            out[0] = acc

    return sum_all


@functools.lru_cache(maxsize=None)
def _sum_kernel(threads, shfl):
    return cuda.jit(sum_kernel_py(threads, shfl))


def to_host(a, stream=0):
    """Copy device array ``a`` to the host and wait for it (on ``stream``)."""
    h = a.copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    return h


def device_sum(a, stream=0):
    """Deterministic float64 sum of device array ``a`` (1-D), as a host float."""
    if a.size == 0:
        return 0.0
    out = cuda.device_array(1, dtype=np.float64, stream=stream)
    _sum_kernel(THREADS, USE_SHFL)[1, THREADS, stream](a, out)
    return float(to_host(out, stream)[0])


def grid_for(n, threads=THREADS):
    """Blocks of a grid-stride launch over ``n`` items (fixed cap)."""
    return max(1, min(MAX_BLOCKS, -(-n // threads)))


__all__ = ["SIM", "USE_SHFL", "THREADS", "MAX_BLOCKS", "block_ops", "shared_size", "device_sum", "to_host", "grid_for",
           "int64"]
