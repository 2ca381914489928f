"""The stability contract, against the 60-digit oracle, for every host backend.

For each extreme point and dense sweep (float16 via the API, float32,
float64), per element or row: no NaN/inf where the truth is finite, no exact 0
where the truth is a nonzero normal number, ulp error <= 4 (1 + kappa), exact
+-inf limits, NaN in -> NaN out without an exception or RuntimeWarning.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import fastloss
from fastloss import oracle
from tests.conftest import ELEMENTWISE, SOFTMAX
from tests.tolerances import assert_contract, call_checked

# float16 is computed in float32 by the API and rounded once: same contract
DTYPES = [np.float16, np.float32, np.float64]
INF, NAN = math.inf, math.nan


def _big(dtype):
    return {2: 6e4, 4: 3e38, 8: 1e308}[np.dtype(dtype).itemsize]


def _tiny(dtype):
    return float(np.finfo(dtype).smallest_subnormal)


def extreme_z(dtype):
    mags = [0.0, _tiny(dtype), 1e-30, 0.5, 1.0, 15.0, 17.0, 20.0, 37.0, 40.0, 100.0, 745.0,
            1000.0, 1e30, _big(dtype), INF]
    return sorted({s * m for m in mags for s in (1.0, -1.0)}) + [NAN]


TARGETS = {
    "mse": [0.0, 1.0, -2.5, 1e-30, 1e30],
    # y = 0.5 = sigmoid(0) has its own case below (test_bug_target_half_*)
    "sigmoid_mse": [0.0, 1.0, 0.3, 0.75, 1e-8],
    "sigmoid_bce": [0.0, 1.0, 0.3, 0.75, 1e-8],
}


def _cast(a, dtype):
    with np.errstate(over="ignore"):
        return np.asarray(a, dtype=np.float64).astype(dtype)


# oracle results depend only on the (cast) inputs: compute once per case
@functools.lru_cache(maxsize=None)
def _elementwise_case(op, dtype, case):
    dtype = np.dtype(dtype)
    if case == "extreme":
        ys = [v for v in TARGETS[op] if abs(v) < float(np.finfo(dtype).max)]  # finite in dtype
        z, y = np.meshgrid(extreme_z(dtype), ys + [NAN], indexing="ij")
        z, y = z.ravel(), y.ravel()
    else:  # dense log-spaced sweep over +-[1e-40, 1e30] with a few targets
        mags = np.logspace(-40, 30, 301)
        zz = np.concatenate([mags, -mags])
        z, y = np.meshgrid(zz, TARGETS[op][:3], indexing="ij")
        z, y = z.ravel(), y.ravel()
    z, y = _cast(z, dtype), _cast(y, dtype)
    kw = {}
    if case == "weighted":
        z, y = _elementwise_case(op, dtype, "extreme")[:2]
        kw["w"] = _cast(np.resize([2.5, 0.0, 1e-3, 7.0], z.size), dtype)
        if op == "sigmoid_bce":
            kw["pw"] = _cast(np.resize([3.0, 0.25, 1.0], z.size), dtype)
    return (z, y, kw) + oracle.elementwise(op, z, y, **kw)


@pytest.mark.parametrize("case", ["extreme", "dense", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_contract(backend, op, dtype, case):
    z, y, kw, l, g, kl, kg = _elementwise_case(op, np.dtype(dtype), case)
    api = {"weight": kw.get("w"), "pos_weight": kw.get("pw")} if op == "sigmoid_bce" else {"weight": kw.get("w")}
    (loss, grad), warns = call_checked(getattr(fastloss, op), z, y, reduction="none", return_grad=True,
                                       backend=backend, **api)
    assert loss.dtype == grad.dtype == dtype
    assert_contract(loss, l, kl, dtype, what=f"{backend} {op} loss [{case}]")
    assert_contract(grad, g, kg, dtype, what=f"{backend} {op} grad [{case}]")
    assert warns == [], "RuntimeWarning on valid input"


# --------------------------------------------------------------------------
# softmax rows
# --------------------------------------------------------------------------
def extreme_rows(dtype):
    """(rows (R, 3), labels (R,)) covering the cases where peers fail."""
    b, t = _big(dtype), _tiny(dtype)
    rows, labels = [], []

    def add(row, *labs):
        for lab in labs:
            rows.append(row)
            labels.append(lab)

    for c in (0.0, 1e6, 1e7, 1e8, 1e15, -1e7):  # shifted rows c + [1, 0, 0]
        add([c + 1, c, c], 0, 1)
    for big in (20.0, 40.0, 100.0, 800.0):  # dominant label: p -> 1
        add([big, 0.0, 0.0], 0, 1)
        add([0.0, -big, big / 2], 2)
    add([1000.0, -1000.0, 0.0], 0, 1, 2)
    add([1e30, -1e30, 0.0], 0, 2)
    add([b, -b, 0.0], 0, 1)
    add([b, b, -b], 0, 2)
    add([-b, -b, -b], 1)
    add([t, 0.0, -t], 0, 2)
    add([t, t, t], 1)
    add([1.0, -INF, 2.0], 0, 1, 2)  # masked class (label on it: infinite loss)
    add([-INF, 0.0, -INF], 1)
    add([-INF, -INF, -INF], 0)  # all masked: loss 0, grad 0
    add([INF, 0.0, 1.0], 0, 1)  # +inf rows take the limit
    add([INF, INF, -INF], 0, 2)
    add([NAN, 0.0, 1.0], 0)
    add([0.0, NAN, INF], 2)
    add([0.5, -0.25, 3.0], -100)  # ignored row
    add([NAN, 0.0, 0.0], -100)
    return _cast(rows, dtype), np.array(labels, dtype=np.int64)


def random_rows(dtype):
    """Ordinary rows (rounded to 3 decimals so failures are easy to quote)."""
    rng = np.random.default_rng(7)
    z = np.round(rng.standard_normal((60, 3)) * 4, 3)
    return _cast(z, dtype), rng.integers(0, 3, 60).astype(np.int64)


def sweep_rows(dtype):
    mags = np.logspace(-40, 30, 141)
    x = np.concatenate([mags, -mags])
    rows = np.stack([x, np.zeros_like(x), np.full_like(x, -1.0)], axis=1)
    rows = np.concatenate([rows, np.stack([x, x / 2, np.zeros_like(x)], axis=1)])
    return _cast(rows, dtype), np.arange(rows.shape[0], dtype=np.int64) % 3


SOFTMAX_VARIANTS = ["plain", "weighted", "smoothed", "probs"]


@functools.lru_cache(maxsize=None)
def _softmax_case(op, dtype, rowset, variant):
    dtype = np.dtype(dtype)
    z, labels = {"extreme": extreme_rows, "sweep": sweep_rows, "random": random_rows}[rowset](dtype)
    kw = {}
    if variant in ("weighted", "smoothed"):
        kw["w"] = _cast([0.5, 2.0, 1.0], dtype)
    if variant == "smoothed":
        kw["smoothing"] = 0.1
    if variant == "probs":
        base = _cast([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.75, 0.25]], dtype)
        kw["probs"] = base[np.arange(z.shape[0]) % 3]
        labels = None
    res = oracle.softmax_rows(op, z, labels=labels, **kw)
    return (z, labels, kw) + res


@pytest.mark.parametrize("rowset", ["extreme", "sweep", "random"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,variant", [(op, v) for op in SOFTMAX for v in SOFTMAX_VARIANTS
                                        if op == "softmax_cross_entropy" or v != "smoothed"])
def test_softmax_contract(backend, op, dtype, rowset, variant):
    z, labels, kw, l, g, kl, kg = _softmax_case(op, np.dtype(dtype), rowset, variant)
    target = kw["probs"] if labels is None else labels
    api = {"weight": kw.get("w")}
    if "smoothing" in kw:
        api["label_smoothing"] = kw["smoothing"]
    (loss, grad), warns = call_checked(getattr(fastloss, op), z, target, reduction="none", return_grad=True,
                                       backend=backend, **api)
    assert loss.dtype == grad.dtype == dtype
    assert_contract(loss, l, kl, dtype, what=f"{backend} {op} loss [{rowset}/{variant}]")
    assert_contract(grad, g, kg, dtype, what=f"{backend} {op} grad [{rowset}/{variant}]")
    assert warns == [], "RuntimeWarning on valid input"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", SOFTMAX + ELEMENTWISE)
def test_nan_in_nan_out_reduced(backend, op, dtype):
    """A NaN makes the reduced loss NaN and poisons only its own gradient entries."""
    if op in SOFTMAX:
        z = np.array([[0.0, 1.0, 2.0], [NAN, 0.0, 0.0]], dtype=dtype)
        target = np.array([0, 1])
    else:
        z = np.array([0.0, NAN, 2.0], dtype=dtype)
        target = np.array([0.0, 1.0, 0.5], dtype=dtype)
    loss, grad = getattr(fastloss, op)(z, target, reduction="sum", return_grad=True, backend=backend)
    assert np.isnan(loss)
    bad = np.isnan(z).any(axis=-1, keepdims=True) if op in SOFTMAX else np.isnan(z)
    assert np.isnan(grad[np.broadcast_to(bad, z.shape)]).all()
    assert np.isfinite(grad[~np.broadcast_to(bad, z.shape)]).all()


# --------------------------------------------------------------------------
# the oracle itself
# --------------------------------------------------------------------------
def test_oracle_closed_forms():
    l, g, _, _ = oracle.elementwise("sigmoid_bce", [0.0, 0.0, INF, -INF], [1.0, 0.0, 1.0, 1.0])
    assert l.tolist()[:3] == [math.log(2), math.log(2), 0.0] and l[3] == INF
    assert g.tolist() == [-0.5, 0.5, 0.0, -1.0]
    l, g, _, _ = oracle.elementwise("sigmoid_mse", [40.0], [1.0])
    e = math.exp(-40.0)  # s - 1 = -e/(1+e); grad 2 (s-1) s (1-s)
    assert math.isclose(l[0], (e / (1 + e)) ** 2, rel_tol=1e-15)
    assert math.isclose(g[0], -2 * (e / (1 + e)) ** 2 / (1 + e), rel_tol=1e-15)
    l, g, kl, _ = oracle.softmax_rows("softmax_cross_entropy", [[1e15 + 1, 1e15, 1e15]], labels=[1])
    p0 = math.e / (math.e + 2)
    assert math.isclose(l[0], math.log(math.e + 2), rel_tol=1e-15)
    assert np.allclose(g[0], [p0, (1 - p0) / 2 - 1, (1 - p0) / 2], rtol=1e-15, atol=0)
    assert kl[0] < 10  # shift coordinates: the offset 1e15 is not conditioning
    l, g, _, _ = oracle.softmax_rows("softmax_mse", [[0.0, 0.0]], probs=[[1.0, 0.0]])
    assert l.tolist() == [0.5] and g.tolist() == [[-0.5, 0.5]]
    # two tied maxima, one the label, a class 144 below: the pairwise terms
    # cancel 63 digits (p (1 - 2p) = p p0), past 60-digit arithmetic (which
    # returned 0); exactly g0 = 6 p p0^2 with p0 = e^-d / (2 + e^-d), p = 1/(2 + e^-d)
    d = 144.04
    l, g, _, _ = oracle.softmax_rows("softmax_mse", [[-d / 2, d / 2, d / 2]], labels=[1])
    e = math.exp(-d)
    assert math.isclose(g[0, 0], 6 * (e / (2 + e)) ** 2 / (2 + e), rel_tol=1e-15)


def test_oracle_special_rows():
    z = [[-INF, -INF], [INF, INF], [NAN, 0.0], [1.0, 2.0]]
    l, g, kl, kg = oracle.softmax_rows("softmax_cross_entropy", z, labels=[0, 1, 0, -100])
    assert l[0] == 0 and (g[0] == 0).all()
    assert l[1] == math.log(2) and g[1].tolist() == [0.5, -0.5]
    assert np.isnan(l[2]) and np.isnan(g[2]).all()
    assert l[3] == 0 and (g[3] == 0).all()
    assert (kl == 0).all() and (kg == 0).all()


def test_ulp_error_semantics():
    f32 = np.float32
    one = f32(1.0)
    assert oracle.ulp_error(one + np.spacing(one), 1.0, f32) == 1.0
    assert oracle.ulp_error([INF, -INF, NAN], [INF, -INF, NAN], f32).tolist() == [0, 0, 0]
    assert oracle.ulp_error([INF, 1.0, NAN, -INF], [1.0, INF, 1.0, INF], f32).tolist() == [INF] * 4
    # 1e39 overflows float32: a float32 inf is the correctly rounded result
    assert oracle.ulp_error(INF, 1e39, f32) == 0
    # the subnormal floor: one smallest-subnormal step at 0 is one ulp
    assert oracle.ulp_error(float(np.finfo(f32).smallest_subnormal), 0.0, f32) == 1.0
    assert oracle.ulp_error(2.0**-1074, 0.0, np.float64) == 1.0


def _naive_elementwise(mp, op, z, y, w, pw):
    """Textbook formulas at 100 digits: (w l, w dl/dz)."""
    s = 1 / (1 + mp.exp(-z))
    if op == "mse":
        return w * (z - y) ** 2, w * 2 * (z - y)
    if op == "sigmoid_mse":
        return w * (s - y) ** 2, w * 2 * (s - y) * s * (1 - s)
    l = -(pw * y * mp.log(s) + (1 - y) * mp.log(1 - s))
    return w * l, w * ((1 - y) * s - pw * y * (1 - s))


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_oracle_condition_numbers_match_numeric(op):
    """The closed-form kappas equal high-precision numerical differentiation."""
    import mpmath

    rng = np.random.default_rng(11)
    z = rng.standard_normal(6) * 4
    y = np.concatenate([rng.random(4), [0.0, 1.0]])  # hard labels carry no conditioning
    w = rng.random(6) + 0.5
    pw = rng.random(6) + 0.5 if op == "sigmoid_bce" else None
    _, _, kl, kg = oracle.elementwise(op, z, y, w=w, pw=pw)
    with mpmath.workdps(100):
        h = mpmath.mpf("1e-40")
        for i in range(6):
            x = [mpmath.mpf(float(v[i])) for v in (z, y, w)] + [mpmath.mpf(1.0 if pw is None else float(pw[i]))]
            f0 = _naive_elementwise(mpmath, op, *x)
            num = [0, 0]
            for j in range(4 if pw is not None else 3):
                if j == 1 and float(y[i]) in (0.0, 1.0):
                    continue
                xp = list(x)
                xp[j] = x[j] * (1 + h)
                f1 = _naive_elementwise(mpmath, op, *xp)
                for k in (0, 1):
                    num[k] += abs(f1[k] - f0[k]) / h
            assert math.isclose(kl[i], float(num[0] / abs(f0[0])), rel_tol=1e-9), (i, "loss")
            assert math.isclose(kg[i], float(num[1] / abs(f0[1])), rel_tol=1e-9), (i, "grad")


def _naive_row(mp, op, z, t, w):
    e = [mp.exp(v) for v in z]
    S = sum(e)
    p = [v / S for v in e]
    C = len(z)
    if op == "softmax_mse":
        d = [p[k] - t[k] for k in range(C)]
        D = sum(w[k] * d[k] * p[k] for k in range(C))
        return sum(w[k] * d[k] ** 2 for k in range(C)), [2 * p[k] * (w[k] * d[k] - D) for k in range(C)]
    a = [w[k] * t[k] for k in range(C)]
    return -sum(a[k] * mp.log(p[k]) for k in range(C)), [p[k] * sum(a) - a[k] for k in range(C)]


@pytest.mark.parametrize("op", SOFTMAX)
def test_oracle_softmax_condition_numbers_match_numeric(op):
    """Closed-form kappas (shifted logits, targets, weights) vs numerical differentiation."""
    import mpmath

    rng = np.random.default_rng(12)
    for _ in range(3):
        z = rng.standard_normal(4) * 3
        t = rng.random(4)
        t /= t.sum()
        w = rng.random(4) + 0.5
        _, _, kl, kg = oracle.softmax_rows(op, z[None], probs=t[None], w=w)
        with mpmath.workdps(100):
            h = mpmath.mpf("1e-40")
            zm, tm, wm = ([mpmath.mpf(float(v)) for v in a] for a in (z, t, w))
            am = int(np.argmax(z))
            f0 = _naive_row(mpmath, op, zm, tm, wm)
            num_l, num_g = 0, [0] * 4
            for which in ("z", "t", "w"):
                for k in range(4):
                    zz, tt, ww = list(zm), list(tm), list(wm)
                    if which == "z":  # shift coordinates: perturb z_k - max
                        zz[k] += h * (zm[k] - zm[am])
                    elif which == "t":
                        tt[k] *= 1 + h
                    else:
                        ww[k] *= 1 + h
                    f1 = _naive_row(mpmath, op, zz, tt, ww)
                    num_l += abs(f1[0] - f0[0]) / h
                    num_g = [num_g[j] + abs(f1[1][j] - f0[1][j]) / h for j in range(4)]
            assert math.isclose(kl[0], float(num_l / abs(f0[0])), rel_tol=1e-9)
            for j in range(4):
                assert math.isclose(kg[0, j], float(num_g[j] / abs(f0[1][j])), rel_tol=1e-9), j
