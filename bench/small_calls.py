"""Per-call cost of small inputs (2**10 elements; softmax at 64x16), in us.

The whole public call is timed -- validation, dispatch, allocation, kernel --
as the best of many repeats (noise only adds time).  Run:
``python bench/small_calls.py [--rounds N]``.
"""
from __future__ import annotations

import argparse
import timeit

import numpy as np


def cases(rng):
    """(name, function, args, kwargs, gradient shape) for every op at a small size."""
    import fastloss as fl

    z = rng.standard_normal(1024).astype(np.float32)
    y = rng.random(1024).astype(np.float32)
    zs = rng.standard_normal((64, 16)).astype(np.float32)
    lab = rng.integers(0, 16, 64)
    return [
        ("mse", fl.mse, (z, y), z.shape),
        ("sigmoid_mse", fl.sigmoid_mse, (z, y), z.shape),
        ("sigmoid_bce", fl.sigmoid_bce, (z, y), z.shape),
        ("softmax_cross_entropy", fl.softmax_cross_entropy, (zs, lab), zs.shape),
        ("softmax_mse", fl.softmax_mse, (zs, lab), zs.shape),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300, help="timed batches per cell (the best is kept)")
    ap.add_argument("--number", type=int, default=50, help="calls per batch")
    ap.add_argument("--backends", default="numba,c,auto", help="comma-separated; auto = backend=None")
    opts = ap.parse_args(argv)
    from fastloss import available_backends

    avail = available_backends()
    backends = [b for b in opts.backends.split(",") if b == "auto" or b in avail]
    rng = np.random.default_rng(0)
    cells = []  # (op, column, timer)
    for name, fn, args, gshape in cases(rng):
        out = np.empty(gshape, np.float32)
        for b in backends:
            kw = dict(return_grad=True, backend=None if b == "auto" else b)
            for col, extra in ((b, {}), (b + " out=", {"out": out})):
                call = (lambda fn=fn, args=args, kw={**kw, **extra}: fn(*args, **kw))
                call()  # compile / load outside the timing
                cells.append((name, col, timeit.Timer(call)))
    best = [float("inf")] * len(cells)
    # Round-robin over the cells, so a noisy spell (another process on the
    # core) hits every cell alike; the minimum over rounds is kept.
    for _ in range(opts.rounds):
        for i, (_, _, timer) in enumerate(cells):
            best[i] = min(best[i], timer.timeit(opts.number) / opts.number * 1e6)
    cols = list(dict.fromkeys(c for _, c, _ in cells))
    print(f"us per call, float32, return_grad=True, 2**10 elements (softmax 64x16, int labels); "
          f"best of {opts.rounds} x {opts.number} calls")
    print(f"{'op':<24}" + "".join(f"{c:>12}" for c in cols))
    table = {(n, c): t for (n, c, _), t in zip(cells, best)}
    for name in dict.fromkeys(n for n, _, _ in cells):
        print(f"{name:<24}" + "".join(f"{table[name, c]:12.2f}" for c in cols))


if __name__ == "__main__":
    main()
