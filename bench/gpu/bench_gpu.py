"""GPU benchmark of the fused CUDA kernels: GB/s vs copy bandwidth and vs PyTorch.

Run on a machine with an NVIDIA GPU, from the repository root::

    PYTHONPATH=. python bench/gpu/bench_gpu.py            # full sizes, writes bench/results/
    PYTHONPATH=. python bench/gpu/bench_gpu.py --quick    # fewer CE widths

Cases (float32 unless ``--dtype``): sigmoid_bce, sigmoid_mse and mse over
2**26 elements; softmax_cross_entropy on 16384 rows x C, C in 4096 ... 131072.
For each: the fused forward+backward kernel alone (``*_dev``, scale given),
the full ``device_call`` (adds validation, the label check and the host
scalar), a device-to-device copy of the same byte count, and PyTorch eager
forward+backward (``loss.backward()``) when torch with CUDA is installed.
GB/s come from the byte model of :mod:`fastloss.registry` (read logits and
target, write grad [+ labels and row losses]); the copy moves 2 x its size.
Times are medians of ``--reps`` runs timed with CUDA events after warm-up
runs (the first, JIT-compiling call is timed separately as ``compile_s``).

``--smoke`` runs tiny sizes (works under NUMBA_ENABLE_CUDASIM=1, to check
this script; its timings mean nothing and are not written to results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from numba import config, cuda

from fastloss import _cuda
from fastloss._cuda._elementwise import elementwise_dev
from fastloss._cuda._softmax import softmax_dev
from fastloss.registry import LOSSES

SIM = bool(config.ENABLE_CUDASIM)
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


WARMUP = 2


def timed(fn, reps, warmup=None):
    """Median milliseconds of ``fn()`` over ``reps`` runs (CUDA events on a GPU)."""
    for _ in range(WARMUP if warmup is None else warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(reps):
        if SIM:
            t0 = time.perf_counter()
            fn()
            cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        else:
            start, stop = cuda.event(), cuda.event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    return statistics.median(times)


def first_call_s(fn):
    t0 = time.perf_counter()
    fn()
    cuda.synchronize()
    return time.perf_counter() - t0


def copy_ms(nbytes, reps):
    """Device-to-device copy of ``nbytes`` (reads and writes it: 2 x nbytes traffic)."""
    a = cuda.device_array(nbytes // 4, dtype=np.float32)
    b = cuda.device_array(nbytes // 4, dtype=np.float32)
    return timed(lambda: b.copy_to_device(a), reps)


def torch_ms(op, z_host, t_host, reps):
    """PyTorch eager forward+backward, or None without torch/CUDA."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if SIM or not torch.cuda.is_available():
        return None
    z = torch.as_tensor(z_host, device="cuda").requires_grad_(True)
    t = torch.as_tensor(t_host, device="cuda")
    fn = {
        "mse": lambda: F.mse_loss(z, t),
        "sigmoid_mse": lambda: F.mse_loss(torch.sigmoid(z), t),
        "sigmoid_bce": lambda: F.binary_cross_entropy_with_logits(z, t),
        "softmax_cross_entropy": lambda: F.cross_entropy(z, t),
    }[op]

    def step():
        z.grad = None
        fn().backward()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    del z, t
    torch.cuda.empty_cache()
    return statistics.median(times)


def bench_case(op, shape, dtype, reps):
    spec = LOSSES[op]
    z_h, t_h = spec.make_inputs(shape, dtype)
    nbytes = spec.bytes_moved(shape, dtype)
    z, t = cuda.to_device(z_h), cuda.to_device(t_h)
    g = cuda.device_array(shape, dtype=dtype)
    n = z_h.size
    if spec.family == "elementwise":
        zf, tf, gf = z.reshape(n), t.reshape(n), g.reshape(n)
        kernel = lambda: elementwise_dev(op, zf, tf, None, None, gf, None, 1.0 / n)  # noqa: E731
    else:
        R, C = shape
        rows = cuda.device_array(R, dtype=np.float64)
        zf, gf = z.reshape(n), g.reshape(n)
        kernel = lambda: softmax_dev(op, zf, t, None, None, -100, 0.0, gf, rows, 1.0 / R, C)  # noqa: E731
    api = lambda: _cuda.device_call(op, z, t, return_grad=True, out=g)  # noqa: E731
    compile_s = first_call_s(kernel)
    row = {"op": op, "shape": list(shape), "dtype": np.dtype(dtype).name, "bytes": nbytes,
           "compile_s": round(compile_s, 3)}
    ms = timed(kernel, reps)
    row.update(kernel_ms=ms, kernel_GBps=nbytes / ms / 1e6)
    ms = timed(api, reps)
    row.update(api_ms=ms, api_GBps=nbytes / ms / 1e6)
    ms = copy_ms(nbytes // 2, reps)  # a copy of half the bytes moves the same traffic
    row.update(copy_ms=ms, copy_GBps=nbytes / ms / 1e6)
    del z, t, g
    ms = torch_ms(op, z_h, t_h, reps)
    if ms is not None:
        row.update(torch_ms=ms, torch_GBps=nbytes / ms / 1e6, speedup_vs_torch=ms / row["kernel_ms"])
    row["of_copy_bw"] = row["kernel_GBps"] / row["copy_GBps"]
    return row


def environment():
    if SIM:
        name = "CUDA simulator"
    else:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    info = {"device": name, "python": platform.python_version(), "numpy": np.__version__}
    import numba

    info["numba"] = numba.__version__
    try:
        from importlib.metadata import version

        info["numba-cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001 - version metadata is informative only
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def markdown(env, rows, command):
    lines = [f"# fastloss CUDA kernels on {env['device']}", "",
             "| op | shape | dtype | fused GB/s | % of D2D copy | device_call GB/s | torch eager GB/s | speed-up vs torch |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        tg = f"{r['torch_GBps']:.0f}" if "torch_GBps" in r else "-"
        sp = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        lines.append(f"| {r['op']} | {' x '.join(map(str, r['shape']))} | {r['dtype']} | {r['kernel_GBps']:.0f} | "
                     f"{100 * r['of_copy_bw']:.0f}% | {r['api_GBps']:.0f} | {tg} | {sp} |")
    lines += ["", "Bytes per call from `fastloss.registry.LossSpec.bytes_moved` (read logits + target, write grad; "
              "CE adds int64 labels and float64 row losses). Medians of CUDA-event timings after warm-up.", "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), "", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="CE widths 4096 and 32768 only")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes to check the script (no results written)")
    args = ap.parse_args(argv)
    _cuda.check_available()
    dtype = np.dtype(args.dtype).type
    global WARMUP
    if args.smoke:
        n, R, widths, reps = 1 << 8, 4, [64], 1
        WARMUP = 0
    else:
        n, R, reps = 1 << 26, 16384, args.reps
        widths = [4096, 32768] if args.quick else [4096, 8192, 16384, 32768, 65536, 131072]
    cases = [(op, (n,)) for op in ("sigmoid_bce", "sigmoid_mse", "mse")]
    cases += [("softmax_cross_entropy", (R, C)) for C in widths]
    env = environment()
    rows = []
    for op, shape in cases:
        row = bench_case(op, shape, dtype, reps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "PYTHONPATH=. python bench/gpu/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.smoke:
        return rows
    slug = "".join(c if c.isalnum() else "_" for c in env["device"]).strip("_").lower()
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"gpu_{slug}_{args.dtype}")
    with open(base + ".json", "w") as fh:
        json.dump({"environment": env, "command": command, "results": rows}, fh, indent=1)
    with open(base + ".md", "w") as fh:
        fh.write(markdown(env, rows, command))
    print(f"wrote {base}.json and {base}.md")
    return rows


if __name__ == "__main__":
    main()
