"""Throughput of every op x implementation x dtype x size x mode (pytest-benchmark).

Run as benchmarks::

    pytest bench/test_throughput.py --benchmark-enable --bench-sizes=quick \
        --benchmark-json=bench.json
    python bench/report.py bench.json

Without ``--benchmark-enable`` each case runs once at tiny sizes and checks
that the timed call computes the same loss as the NumPy reference.
"""
from __future__ import annotations

import numpy as np

from fastloss import registry
from fastloss._bench import timing

#: loss agreement between implementations on ordinary inputs
RTOL = {"float32": 1e-4, "float64": 1e-10}


def _loss_of(result):
    loss = result[0] if isinstance(result, tuple) else result
    if hasattr(loss, "detach"):
        loss = loss.detach()
    return float(np.asarray(loss))


def test_memory_bandwidth(benchmark, bandwidth):
    n = 1 << 16
    a, b = np.zeros(n), np.ones(n)
    benchmark(np.copyto, a, b)
    benchmark.extra_info.update(bandwidth)
    assert bandwidth["copy_gbs"] > 0 and bandwidth["triad_gbs"] > 0
    np.testing.assert_array_equal(a, b)


def test_throughput(benchmark, case, bandwidth):
    impl, op, dtype, shape, mode = case
    spec = registry.LOSSES[op]
    dt = np.dtype(dtype)
    z, y = spec.make_inputs(shape, dt)
    fn = impl.prepare(op, z, y, grad=mode != "forward", **({"out": True} if mode == "fused_out" else {}))
    first = timing.first_call(fn)  # JIT / tracing happens here, outside the timing
    result = benchmark(fn)
    benchmark.extra_info.update(
        impl=impl.name, op=op, dtype=dt.name, shape=list(shape), n=int(np.prod(shape)), mode=mode,
        bytes=int(spec.bytes_moved(shape, dt, grad=mode != "forward")), first_call_s=first,
        peak_gbs=bandwidth["peak_gbs"])
    expected = spec.func(z, y, backend="numpy")
    np.testing.assert_allclose(_loss_of(result), float(expected), rtol=RTOL[dt.name])
