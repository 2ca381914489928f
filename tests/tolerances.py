"""The one table of test tolerances, and the assert helpers that use it.

Never loosen a number here to make a test pass without saying why in the
comment next to it: each is derived from the stability contract or from the
rounding of the dtype.
"""
from __future__ import annotations

import numpy as np

from fastloss import oracle

#: Contract bound against the 60-digit oracle: err <= ORACLE_ULPS[dtype] *
#: (1 + kappa) ulp, per element/row.  The numbers live with the oracle
#: (fastloss.oracle.CONTRACT_ULPS, also used by the stability benchmark and
#: stated in the README): 4 for float16/float32, 8 for float64 (no wider type
#: to compute in; test_regressions.py shows the 17-ulp-at-kappa-1.28 case).
ORACLE_ULPS = {np.dtype(k): v for k, v in oracle.CONTRACT_ULPS.items()}

#: Backend vs the float64 NumPy reference, per dtype.
#: rtol: relative error of one element; atol: absolute error as a fraction of
#: the largest |expected| in the compared array (a gradient entry that cancels
#: carries the rounding of the row's scale, not of its own magnitude).
TOL = {
    # Both sides are <= 4(1+kappa) ulp from the truth, kappa <= ~7 for the
    # ordinary inputs these tests use: 2 * 4 * 8 = 64 ulp of 2**-53.
    np.dtype(np.float64): dict(rtol=64 * 2.0**-53, atol=16 * 2.0**-53),
    # Same count of float32 ulps (2**-24 relative each).
    np.dtype(np.float32): dict(rtol=64 * 2.0**-24, atol=16 * 2.0**-24),
    # float16 is computed in float32 and rounded once: two float32 results one
    # ulp apart may round to neighbouring halves, so 2 ulp of 2**-11 (+ slack
    # for a float32 result sitting at a rounding tie).
    np.dtype(np.float16): dict(rtol=4 * 2.0**-11, atol=2 * 2.0**-11),
}

#: Reduced (mean/sum) scalars: the float64 accumulation order differs between
#: backends (pairwise vs sequential); terms are non-negative, so the relative
#: error is at most n * eps64 with n <= 10**4 here, below the per-dtype rtol
#: for float32/float16 and given explicitly for float64.
REDUCED_RTOL = {
    np.dtype(np.float64): 1e4 * 2.0**-53,
    np.dtype(np.float32): TOL[np.dtype(np.float32)]["rtol"],
    np.dtype(np.float16): TOL[np.dtype(np.float16)]["rtol"],
}

#: Absolute error a mean returned in the dtype can carry however exact the
#: kernel: below the normal range sum / n is rounded to the subnormal grid,
#: up to half its spacing off (a sum of 5e-324 over 2 rows has mean 0), so
#: mean * n may differ from the sum by n times that.  The table holds the
#: whole spacing (half of it is not a float64).
MEAN_FLOOR = {dt: float(np.finfo(dt).smallest_subnormal)
              for dt in (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16))}

#: Central finite differences in float64 with step h = 1e-6 * max(1, |z|):
#: truncation error O(h^2 f''') ~ 1e-12 and cancellation error eps/h ~ 2e-10
#: relative to the loss scale.
GRADCHECK = dict(rtol=1e-6, atol=1e-8)

#: torch computes float32 natively (no float64 internals): its own error on
#: ordinary inputs is a few tens of float32 ulp (log-sum-exp, mean).
TORCH = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
}


def _worst(mask, score, actual, expected, extra=None, k=5):
    """Lines describing the k worst flagged elements (by score)."""
    idx = np.argwhere(mask)
    order = np.argsort(-np.where(np.isnan(score[mask]), np.inf, score[mask]), kind="stable")[:k]
    lines = []
    for i in order:
        pos = tuple(int(v) for v in idx[i])
        line = f"  at {pos}: actual={actual[pos]!r} expected={expected[pos]!r}"
        if extra is not None:
            line += " " + ", ".join(f"{n}={v[pos]:.3g}" for n, v in extra.items())
        lines.append(line)
    return "\n".join(lines)


def assert_close(actual, expected, dtype, *, what="", rtol=None, atol=None, scale=None):
    """Assert elementwise agreement within :data:`TOL` for ``dtype``.

    NaN must match NaN and infinities must match exactly (same sign); finite
    values need ``|a - e| <= atol * scale + rtol * |e|`` with ``scale`` the
    size of the terms the results are formed from (default ``max|e|``).  The
    message lists the worst elements, NaN/inf mismatches first.
    """
    dtype = np.dtype(dtype)
    tol = TOL[dtype]
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    a2, e2 = np.atleast_1d(a), np.atleast_1d(e)
    fin = np.isfinite(e2)
    if scale is None:
        scale = float(np.max(np.abs(e2[fin]))) if fin.any() else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        bound = atol * scale + rtol * np.abs(e2)
        err = np.abs(a2 - e2)
    special = ~(np.isfinite(a2) & fin)
    same_special = (np.isnan(a2) & np.isnan(e2)) | ((a2 == e2) & ~np.isnan(a2))
    bad_special = special & ~same_special
    bad = bad_special | (~special & (err > bound))
    if bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(bad_special, np.inf, err / np.maximum(bound, 1e-300))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a2.size} elements differ beyond rtol={rtol:.3g}, "
            f"atol={atol:.3g}*{scale:.3g} ({int(bad_special.sum())} NaN/inf mismatches); worst:\n"
            + _worst(bad, score, a2, e2, {"err/tol": score})
        )


def assert_reduced(actual, expected, dtype, *, what="", floor=0.0):
    """A reduced scalar against the reference within :data:`REDUCED_RTOL`,
    plus an absolute ``floor`` (e.g. ``n * MEAN_FLOOR[dtype]`` for a mean
    scaled back by ``n``)."""
    dtype = np.dtype(dtype)
    assert_close(np.float64(actual), np.float64(expected), dtype, what=what,
                 rtol=REDUCED_RTOL[dtype], atol=floor, scale=1.0)


def assert_contract(actual, exact, kappa, dtype, *, what=""):
    """The stability contract for one array of results against the oracle.

    1. no NaN/inf where the exact value (rounded to ``dtype``) is finite;
    2. no exact 0 where the exact value is a nonzero normal number of ``dtype``;
    3. ``ulp_error <= ORACLE_ULPS[dtype] * (1 + kappa)``, which also demands exact
       ``+-inf`` limits and NaN exactly where the exact value is NaN.
    """
    dtype = np.dtype(dtype)
    a = np.atleast_1d(np.asarray(actual, dtype=np.float64))
    x = np.atleast_1d(np.asarray(exact, dtype=np.float64))
    k = np.atleast_1d(np.asarray(kappa, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        xd = x.astype(dtype).astype(np.float64)
    problems = []
    nonfinite = ~np.isfinite(a) & np.isfinite(xd)
    if nonfinite.any():
        problems.append("NaN/inf where the exact value is finite:\n"
                        + _worst(nonfinite, np.abs(xd), a, x))
    zero = (a == 0) & (np.abs(x) >= np.finfo(dtype).tiny)
    if zero.any():
        problems.append("exact 0 where the exact value is a nonzero normal number:\n"
                        + _worst(zero, np.abs(x), a, x))
    err = oracle.ulp_error(a, x, dtype)
    with np.errstate(over="ignore"):  # kappa may be ~1e308: the bound is then inf
        bound = ORACLE_ULPS[dtype] * (1.0 + k)
    over = err > bound
    if over.any():
        problems.append(f"ulp error above {ORACLE_ULPS[dtype]:g}*(1+kappa):\n"
                        + _worst(over, err / bound, a, x, {"ulp": err, "kappa": k}))
    if problems:
        raise AssertionError(f"{what} ({dtype}):\n" + "\n".join(problems))


def call_checked(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with RuntimeWarnings recorded, not raised.

    The contract says special inputs give special values "without exception";
    pytest turns RuntimeWarnings into errors, which would hide the values.
    Returns ``(result, messages)``: callers check the values first, then
    assert ``messages == []`` (a warning on valid input is itself a failure).
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = fn(*args, **kwargs)
    return result, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
