"""Throughput of fused forward+backward (and forward-only) calls.

Every (op, implementation, dtype, shape, mode) gives one record with the
steady seconds per call, the first call's seconds (``compile_s`` = first -
steady: JIT / tracing / compilation, reported apart), GB/s from the
registry's byte model and the fraction of the measured memory bandwidth.
"""
from __future__ import annotations

import gc

import numpy as np

from .. import registry
from . import timing

#: elementwise sizes (elements) and softmax shapes (rows, classes) per size set
SIZES = {
    "tiny": {"elementwise": [(1 << 10,)], "softmax": [(64, 10), (8, 1000)]},
    "quick": {"elementwise": [(1 << 14,), (1 << 20,)],
              "softmax": [(8192, 10), (1024, 1000), (128, 32000), (16, 128256)]},
    "full": {"elementwise": [(1 << k,) for k in range(10, 25, 2)],
             "softmax": [(65536, 10), (16384, 1000), (2048, 32000), (256, 128256)]},
}
#: fused: loss + a fresh gradient array (the drop-in call); fused_out: the
#: gradient written into a caller's reused ``out=`` buffer (fastloss only: no
#: page faults on fresh memory, which cost 30-90% at DRAM sizes); forward:
#: loss only.
MODES = ("fused", "fused_out", "forward")


def shapes_for(op, size_set):
    return SIZES[size_set][registry.LOSSES[op].family]


def plan(impls, ops, dtypes, size_set, modes=MODES):
    """The list of (impl, op, dtype, shape, mode) tasks, in run order."""
    return [(impl, op, dt, shape, mode)
            for op in ops for dt in dtypes for shape in shapes_for(op, size_set)
            for mode in modes for impl in impls
            if mode != "fused_out" or getattr(impl, "supports_out", False)]


def measure(impl, op, dtype, shape, mode, *, peak_gbs=None, min_time=0.05, repeats=5, inputs=None):
    """One throughput record (a dict); errors are recorded, not raised."""
    spec = registry.LOSSES[op]
    dt = np.dtype(dtype)
    z, y = inputs if inputs is not None else spec.make_inputs(shape, dt)
    grad = mode != "forward"
    nbytes = spec.bytes_moved(shape, dt, grad=grad)
    rec = {"impl": impl.name, "op": op, "dtype": dt.name, "shape": list(shape), "n": int(np.prod(shape)),
           "mode": mode, "bytes": int(nbytes)}
    try:
        fn = impl.prepare(op, z, y, grad=grad, **({"out": True} if mode == "fused_out" else {}))
        first = timing.first_call(fn)
        sec = timing.time_call(fn, min_time=min_time, repeats=repeats)
    except Exception as exc:  # a peer that cannot run this case is reported, not fatal
        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return rec
    rec.update(seconds=sec, first_call_s=first, compile_s=max(first - sec, 0.0), gbs=nbytes / sec / 1e9)
    if peak_gbs:
        rec["frac_peak"] = rec["gbs"] / peak_gbs
    return rec


def run(impls, ops, dtypes, size_set, *, peak_gbs=None, modes=MODES, min_time=0.05, repeats=5, progress=None):
    """Measure every task of :func:`plan`; inputs are made once per case."""
    records = []
    cache_key, inputs = None, None
    for impl, op, dt, shape, mode in plan(impls, ops, dtypes, size_set, modes):
        if cache_key != (op, dt, shape):
            inputs = None
            gc.collect()
            inputs = registry.LOSSES[op].make_inputs(shape, np.dtype(dt))
            cache_key = (op, dt, shape)
        if progress is not None:
            progress(f"{impl.name} {op} {np.dtype(dt).name} {'x'.join(map(str, shape))} {mode}")
        records.append(measure(impl, op, dt, shape, mode, peak_gbs=peak_gbs, min_time=min_time,
                               repeats=repeats, inputs=inputs))
    return records


def ratios(records, baseline_prefix="fastloss:"):
    """Peer time / fastloss time for every case both measured (>1: fastloss faster).

    Returns a list of dicts ``{op, dtype, shape, mode, impl, peer, ratio}``.
    """
    by_case = {}
    for r in records:
        if "seconds" in r:
            by_case.setdefault((r["op"], r["dtype"], tuple(r["shape"]), r["mode"]), {})[r["impl"]] = r["seconds"]
    for (op, dt, shape, mode), times in by_case.items():
        if mode == "fused_out":  # peers have no out=: compared with their fused call
            for impl, t in by_case.get((op, dt, shape, "fused"), {}).items():
                if not impl.startswith(baseline_prefix):
                    times.setdefault(impl, t)
    out = []
    for (op, dt, shape, mode), times in by_case.items():
        for impl, t in times.items():
            if not impl.startswith(baseline_prefix):
                continue
            for peer, tp in times.items():
                if peer.startswith(baseline_prefix):
                    continue
                out.append({"op": op, "dtype": dt, "shape": list(shape), "mode": mode,
                            "impl": impl, "peer": peer, "ratio": tp / t})
    return out
