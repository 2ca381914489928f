"""Stability benchmark: dense sweeps over the float range against the mpmath oracle.

For every op, implementation and dtype it counts

* ``nonfinite``: NaN/inf results (loss or gradient) where the true value,
  rounded to the dtype, is finite;
* ``zeros``: exact zeros where the true value is a normal number of the dtype;
* ``special``: wrong results where the truth is not finite (NaN inputs must
  give NaN, infinite limits must match);
* ``max_err``: the largest error in ulps divided by ``1 + kappa`` (kappa: the
  oracle's condition number) over the entries where both are finite.

The inputs cover logits to +-1e30 and beyond (to the dtype's max), +-inf,
NaN, masked ``-inf`` classes, dominant-label rows, a class 2^-40..1 below the
max (not tied) and rows shifted by a large common offset.  The oracle is computed once per (op, dtype) and shared by
every implementation.
"""
from __future__ import annotations

import numpy as np

from .. import registry


def _signed_logspace(lo, hi, num):
    mag = np.logspace(lo, hi, num)
    return np.concatenate([-mag[::-1], mag])


def elementwise_sweep(dtype, density=1):
    """``(z, y)`` 1-D sweeps of the dtype: logits over the whole range x targets."""
    fi = np.finfo(dtype)
    top = np.log10(float(fi.max)) - 0.01
    z = np.concatenate([
        np.linspace(-60, 60, 121 * density),  # where sigmoid does its work
        _signed_logspace(-30, top, 90 * density),  # tiny to huge, 1e30 and up to max
        [0.0, float(fi.max), -float(fi.max), float(fi.smallest_subnormal), np.inf, -np.inf, np.nan],
    ])
    z = np.unique(z.astype(dtype))  # (unique puts the NaN last)
    targets = np.array([0.0, 1.0, 0.25], dtype=dtype)
    zz, yy = np.meshgrid(z, targets, indexing="ij")
    return zz.ravel().copy(), yy.ravel().copy()


def softmax_sweep(dtype, density=1, C=4, seed=0):
    """``(z (R, C), labels (R,))``: scaled random rows, masks, specials, dominant, near-tied and shifted rows."""
    rng = np.random.default_rng(seed)
    fi = np.finfo(dtype)
    top = np.log10(float(fi.max)) - 1
    rows, labels = [], []

    def add(row, label):
        rows.append(np.asarray(row, dtype=np.float64))
        labels.append(label)

    for s in np.logspace(-3, top, 60 * density):  # random rows at every scale
        add(rng.standard_normal(C) * s, int(rng.integers(C)))
    for d in np.concatenate([np.linspace(1, 100, 20 * density), np.logspace(2, top, 20 * density)]):
        add([d] + [0.0] * (C - 1), 0)  # dominant label: p -> 1, tiny loss
        add([d] + [0.0] * (C - 1), 1)  # dominant wrong class: huge loss
        add([-d] + [0.0] * (C - 1), 0)  # label far below the rest
    for c in _signed_logspace(0, top, 15 * density):  # c + [1, 0, 0, ...]: offset invariance
        add(c + np.eye(C)[0], 0)
        add(c + np.eye(C)[0], 1)
    for g in np.logspace(-40, 0, 12 * density, base=2.0):  # a class g below the max, not tied
        for label in (0, 1, 2 % C):
            add([0.0, -g] + [-6.0] * (C - 2), label)
    for k in range(12 * density):  # masked classes (-inf) beside ordinary logits
        row = rng.standard_normal(C) * 10.0 ** rng.uniform(-1, 6)
        masked = rng.choice(C, size=int(rng.integers(1, C)), replace=False)
        row[masked] = -np.inf
        live = [j for j in range(C) if j not in masked]
        add(row, int(live[k % len(live)]))
    add([np.inf, 0.0, 1.0, -np.inf][:C] + [0.0] * (C - 4), 0)  # +inf entry takes all mass
    add([np.inf, 0.0, 1.0, -np.inf][:C] + [0.0] * (C - 4), 1)
    add([-np.inf] * C, 0)  # all masked
    add([np.nan, 0.0, 1.0, 2.0][:C] + [0.0] * (C - 4), 1)  # NaN row
    add([float(fi.max), -float(fi.max)] + [0.0] * (C - 2), 0)
    add([float(fi.max), float(fi.max)] + [0.0] * (C - 2), 0)
    with np.errstate(over="ignore"):
        z = np.array(rows).astype(dtype)
    return z, np.array(labels, dtype=np.int64)


def _classify(actual, exact, cond, dtype, oracle):
    """Counts and max scaled ulp error of ``actual`` against ``exact``."""
    dt = np.dtype(dtype)
    a = np.asarray(actual, dtype=np.float64).ravel()
    e = np.asarray(exact, dtype=np.float64).ravel()
    k = np.broadcast_to(np.asarray(cond, dtype=np.float64), np.shape(exact)).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        e_rounded = e.astype(dt).astype(np.float64)  # truth as the dtype can hold it
    truth_finite = np.isfinite(e_rounded)
    got_finite = np.isfinite(a)
    nonfinite = int(np.sum(truth_finite & ~got_finite))
    normal = truth_finite & (np.abs(e) >= float(np.finfo(dt).tiny))
    zeros = int(np.sum(normal & (a == 0)))
    # truth NaN/inf: the result must be the same special value
    special_truth = ~truth_finite
    same = (np.isnan(e_rounded) & np.isnan(a)) | (e_rounded == a)
    special = int(np.sum(special_truth & ~same))
    both = truth_finite & got_finite
    max_err = 0.0
    if both.any():
        err = np.asarray(oracle.ulp_error(a[both].astype(dt), e[both], dt), dtype=np.float64)
        kk = np.where(np.isfinite(k[both]), k[both], np.inf)
        with np.errstate(invalid="ignore"):
            scaled = err / (1.0 + kk)
        scaled = np.where(np.isnan(scaled), 0.0, scaled)  # inf/inf: unconditioned point
        max_err = float(np.max(scaled))
    return {"points": int(a.size), "nonfinite": nonfinite, "zeros": zeros, "special": special,
            "max_err": max_err}


def _merge(a, b):
    return {"points": a["points"] + b["points"], "nonfinite": a["nonfinite"] + b["nonfinite"],
            "zeros": a["zeros"] + b["zeros"], "special": a["special"] + b["special"],
            "max_err": max(a["max_err"], b["max_err"]), "max_err_loss": a["max_err"], "max_err_grad": b["max_err"]}


def cases(ops, dtypes, density=1):
    """Sweep inputs per (op, dtype)."""
    out = {}
    for op in ops:
        fam = registry.LOSSES[op].family
        for dt in dtypes:
            out[(op, np.dtype(dt).name)] = (elementwise_sweep if fam == "elementwise" else softmax_sweep)(
                np.dtype(dt), density)
    return out


def truth(oracle, op, z, y):
    """Exact ``(loss, grad, loss_cond, grad_cond)`` for a sweep's inputs."""
    zf = z.astype(np.float64)
    if registry.LOSSES[op].family == "elementwise":
        return oracle.elementwise(op, zf, y.astype(np.float64))
    return oracle.softmax_rows(op, zf, labels=y)


def run(impls, ops, dtypes, *, oracle=None, density=1, progress=None):
    """Stability records ``{op, impl, dtype, points, nonfinite, zeros, special, max_err, ...}``."""
    if oracle is None:
        from .. import oracle  # written by the tests helper; mpmath-backed
    records = []
    for (op, dt), (z, y) in cases(ops, dtypes, density).items():
        exact_l, exact_g, cond_l, cond_g = truth(oracle, op, z, y)
        for impl in impls:
            if progress is not None:
                progress(f"stability {impl.name} {op} {dt}")
            rec = {"op": op, "impl": impl.name, "dtype": dt}
            try:
                with np.errstate(all="ignore"):
                    loss, grad = impl.pointwise(op, z.copy(), y.copy())
            except Exception as exc:  # an implementation that raises is reported as such
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
                records.append(rec)
                continue
            rec.update(_merge(_classify(loss, exact_l, cond_l, dt, oracle),
                              _classify(grad, exact_g, cond_g, dt, oracle)))
            records.append(rec)
    return records
