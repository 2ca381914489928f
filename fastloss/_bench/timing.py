"""Timers and a STREAM-like memory-bandwidth probe (same process, same run)."""
from __future__ import annotations

import time

import numpy as np


def time_call(fn, *, min_time=0.05, repeats=5, max_calls=10_000):
    """Seconds per call of ``fn()``: the best of ``repeats`` timed batches.

    Each batch runs ``fn`` enough times to last ``min_time`` (calibrated on
    one call), so tiny kernels are not dominated by timer resolution.  The
    minimum (timeit's convention) is the batch least disturbed by other work
    on the machine; noise only ever adds time.
    """
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    calls = int(min(max_calls, max(1, min_time / one)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return float(np.min(samples))


def first_call(fn):
    """Seconds taken by the very first call (includes any JIT compilation)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _triad_numba(parallel):
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None

    @numba.njit(parallel=parallel)
    def triad(a, b, c, s):
        # prange: all cores, as threaded fastloss kernels may use (range when not parallel)
        for i in numba.prange(a.size):
            a[i] = b[i] + s * c[i]

    return triad


def memory_bandwidth(n=1 << 23, repeats=5):
    """Measure copy and triad bandwidth in GB/s on float64 arrays of ``n``.

    Copy moves ``2 * 8n`` bytes (NumPy ``copyto``, one thread); triad
    ``a = b + s c`` moves ``3 * 8n`` (Numba, one thread and all threads; else
    two NumPy passes counted as the 5 array streams they really make).  The
    peak is the best of them.  Arrays of 64 MiB by default are far larger
    than any cache.
    """
    a = np.zeros(n)
    b = np.ones(n)
    c = np.full(n, 2.0)
    copy_s = time_call(lambda: np.copyto(a, b), min_time=0.05, repeats=repeats)
    triad, triad_mt = _triad_numba(False), _triad_numba(True)
    mt = None
    if triad is not None:
        triad(a, b, c, 3.0)  # compile outside the timing
        triad_mt(a, b, c, 3.0)
        triad_s = time_call(lambda: triad(a, b, c, 3.0), min_time=0.05, repeats=repeats)
        mt = 3 * 8 * n / time_call(lambda: triad_mt(a, b, c, 3.0), min_time=0.05, repeats=repeats) / 1e9
        triad_bytes, how = 3 * 8 * n, "numba"
    else:  # pragma: no cover
        def np_triad():
            np.multiply(c, 3.0, out=a)
            np.add(a, b, out=a)
        triad_s = time_call(np_triad, min_time=0.05, repeats=repeats)
        triad_bytes, how = 5 * 8 * n, "numpy"
    copy = 2 * 8 * n / copy_s / 1e9
    tri = triad_bytes / triad_s / 1e9
    peak = max(copy, tri, mt or 0.0)
    return {"copy_gbs": copy, "triad_gbs": tri, "triad_all_threads_gbs": mt, "peak_gbs": peak, "n": n,
            "triad_impl": how}
