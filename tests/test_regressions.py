"""Regression tests: minimal repros of defects found (and fixed) in the
reference and the API layer.

Each test states the expected behaviour from the stability contract.  Every
host backend is run, since backends mirror the reference.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss import oracle
from tests.tolerances import ORACLE_ULPS, assert_contract, call_checked


def test_regression_overflow_cast_warns_float32_elementwise(backend):
    # true gradient 2 * 6e38 rounds to float32 inf: correct value, but the
    # float64 -> float32 store raises "overflow encountered in cast"
    # (reference.py elementwise: grad[...] = g / loss[...] = l outside errstate).
    z, y = np.float32([3e38]), np.float32([-3e38])
    (loss, grad), warns = call_checked(fastloss.mse, z, y, reduction="none", return_grad=True, backend=backend)
    assert np.isinf(loss[0]) and grad[0] == np.inf
    assert warns == []


def test_regression_overflow_cast_warns_float32_softmax_rows(backend):
    # per-row float64 loss 6e38 -> float32 inf in _api._softmax (rows.astype(rdt))
    z = np.float32([[3e38, -3e38]])
    (loss, grad), warns = call_checked(fastloss.softmax_cross_entropy, z, np.array([1]), reduction="none",
                                       return_grad=True, backend=backend)
    assert loss[0] == np.inf
    assert warns == []


def test_regression_softmax_shift_overflow_warns_float64(backend):
    # z - max(z) = -2e308 overflows float64 (reference.py: sh = zf - m outside
    # errstate(over=...)); the limit (exp -> 0) is right, the warning is not.
    z = np.array([[1e308, -1e308]])
    (loss, grad), warns = call_checked(fastloss.softmax_cross_entropy, z, np.array([0]), reduction="none",
                                       return_grad=True, backend=backend)
    assert loss[0] == 0.0 and grad.tolist() == [[0.0, 0.0]]
    assert warns == []


def test_regression_softmax_shift_overflow_gives_inf_loss_float64(backend):
    # loss = -sum_k t_k log p_k = 0.5 * 2e308 = 1e308 is finite, but
    # sum t_k (z_k - m) forms z_k - m = -2e308 = -inf first.
    z = np.array([[1e308, -1e308]])
    t = np.array([[0.5, 0.5]])
    loss, _ = call_checked(fastloss.softmax_cross_entropy, z, t, reduction="none", backend=backend)
    exact = oracle.softmax_rows("softmax_cross_entropy", z, probs=t)
    assert_contract(loss, exact[0], exact[2], np.float64, what="CE loss at +-1e308")


def test_regression_mse_weighted_grad_overflows_early_float64(backend):
    # true gradient 2 * 1e-3 * 1e308 = 2e305; the reference forms 2 * (z - y)
    # = inf before applying the weight.
    z, y, w = np.array([1e308]), np.array([0.0]), np.array([1e-3])
    loss, grad = fastloss.mse(z, y, weight=w, reduction="none", return_grad=True, backend=backend)
    exact = oracle.elementwise("mse", z, y, w=w)
    assert_contract(grad, exact[1], exact[3], np.float64, what="weighted mse grad")


def test_regression_target_half_gives_exact_zero(backend):
    # y = 0.5 = sigmoid(0): s - y = tanh(z/2)/2 ~ z/4 is a normal number for
    # |z| = 1e-30, but s rounds to 0.5 and s - y to exactly 0 (contract rule 1).
    z = np.array([1e-30, -1e-30, 1e-20])
    for dtype in (np.float32, np.float64):
        zz = z.astype(dtype)
        y = np.full(3, 0.5, dtype=dtype)
        for op in ("sigmoid_mse", "sigmoid_bce"):
            loss, grad = getattr(fastloss, op)(zz, y, reduction="none", return_grad=True, backend=backend)
            exact = oracle.elementwise(op, zz, y)
            assert_contract(grad, exact[1], exact[3], dtype, what=f"{op} grad at y=0.5")


def test_regression_ce_smoothing_weight_argmax_grad_cancels_float64(backend):
    # argmax entry with a label and smoothing: the reference forms A - a_m as
    # sum(a) - a_m, cancelling ~4 bits that the function does not (kappa 2.2):
    # 26 ulp > 4 (1 + kappa).  A - a_m should be summed over the other classes.
    z = np.array([[-2.088, 6.485, -12.527, -10.514, -1.064, -9.023, -0.121]])
    w = np.array([0.57, 0.294, 0.059, 0.537, 0.134, 0.554, 0.187])
    lab = np.array([1])
    loss, grad = fastloss.softmax_cross_entropy(z, lab, weight=w, label_smoothing=0.1, reduction="none",
                                                return_grad=True, backend=backend)
    exact = oracle.softmax_rows("softmax_cross_entropy", z, labels=lab, w=w, smoothing=0.1)
    assert_contract(grad, exact[1], exact[3], np.float64, what="CE grad, smoothing + weight")


def test_regression_float64_sigmoid_mse_grad_5ulp_at_kappa_0(backend):
    # kappa = 0.00065: ((2 r) s) sn with r, s, sn each rounded landed 5 ulp
    # away; s (1 - s) is now e / (1 + e)^2 in three roundings.
    z, y = np.array([0.0013004509005128898]), np.array([1.0])
    _, grad = fastloss.sigmoid_mse(z, y, reduction="none", return_grad=True, backend=backend)
    exact = oracle.elementwise("sigmoid_mse", z, y)
    bound = ORACLE_ULPS[np.dtype(np.float64)] * (1 + exact[3][0])
    assert oracle.ulp_error(grad, exact[1], np.float64)[0] <= bound


def test_regression_float64_softmax_mse_grad_5ulp_at_kappa_0(backend):
    z = np.array([[0.0006020894493336076, 0.0, -1.0]])
    t = np.array([[1.0, 0.0, 0.0]])
    _, grad = fastloss.softmax_mse(z, t, reduction="none", return_grad=True, backend=backend)
    exact = oracle.softmax_rows("softmax_mse", z, probs=t)
    assert_contract(grad, exact[1], exact[3], np.float64, what="softmax_mse grad")


def test_regression_float64_softmax_mse_argmax_grad_cancels(backend):
    # argmax entry: 2 p_m (w_m d_m q - D') subtracts 0.2494 - 0.2271 (cancelling
    # ~3.5 bits the function does not: kappa 1.28): 16-17 ulp > 4 (1 + kappa).
    z = np.array([[3.027, -3.382, 3.116]])
    lab = np.array([1])
    _, grad = fastloss.softmax_mse(z, lab, reduction="none", return_grad=True, backend=backend)
    exact = oracle.softmax_rows("softmax_mse", z, labels=lab)
    assert_contract(grad, exact[1], exact[3], np.float64, what="softmax_mse argmax grad")


def test_regression_overflow_cast_warns_float16_results(backend):
    # float16 results are float32 values rounded in _api (astype / rdt.type):
    # a loss of 360000 is float16 inf (right), but the cast warns.
    z, y = np.float16([300.0]), np.float16([-300.0])
    for reduction in ("none", "sum", "mean"):
        (loss, grad), warns = call_checked(fastloss.mse, z, y, reduction=reduction, return_grad=True,
                                           backend=backend)
        assert np.isinf(loss).all() and loss.dtype == np.float16
        assert warns == [], reduction


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(130, 1531), (3, 128256), (1, 1 << 20)])
def test_regression_long_row_target_sums_float64(backend, shape, dtype):
    # Cross-entropy rows with label smoothing or probability targets: A =
    # sum_k a_k was a running sum (C) or a few vector lanes of one (numba),
    # and C equal smoothing terms eps/C round the same way every time
    # (float64: C at C = 128256 had A ~3000 ulp off, the gradient 54x and the
    # loss 78x the tolerance vs the reference; numba at C = 2**20, 4.8x).
    from fastloss.registry import LOSSES
    from tests.tolerances import assert_close

    rng = np.random.default_rng(shape[1])
    z, labels = LOSSES["softmax_cross_entropy"].make_inputs(shape, np.float64, rng=rng)
    _, probs = LOSSES["softmax_cross_entropy"].make_inputs(shape, np.float64, rng=rng, probs=True)
    w = rng.random(shape[1]) + 0.5
    for op, t, kw in (("softmax_cross_entropy", labels, dict(label_smoothing=0.1)),
                      ("softmax_cross_entropy", labels, dict(label_smoothing=0.1, weight=w)),
                      ("softmax_cross_entropy", probs, {}),
                      ("softmax_mse", probs, dict(weight=w))):
        zz = z.astype(dtype)
        tt = t.astype(dtype) if t.dtype.kind == "f" else t
        kwd = {k: (v.astype(dtype) if k == "weight" else v) for k, v in kw.items()}
        loss, grad = getattr(fastloss, op)(zz, tt, reduction="none", return_grad=True, backend=backend, **kwd)
        ref = {k: (v.astype(dtype).astype(np.float64) if k == "weight" else v) for k, v in kw.items()}
        el, eg = getattr(fastloss, op)(zz.astype(np.float64), tt.astype(np.float64) if t.dtype.kind == "f" else tt,
                                       reduction="none", return_grad=True, backend="numpy", **ref)
        what = f"{backend} {op} {shape} {sorted(kw)}"
        assert_close(loss, el, dtype, what=what + " loss")
        assert_close(grad, eg, dtype, what=what + " grad")


def _near_max_rows(seed, n):
    """softmax_mse rows with classes at and just below the max (gaps 2^-40..1,
    exact ties, z - m = -1e-30), labels (the argmax among them) or soft
    targets, with and without weights, both dtypes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        C = int(rng.integers(2, 9))
        dt = (np.float64, np.float32)[i % 2]
        z = rng.normal(0.0, 3.0, C)
        k = rng.integers(0, C, size=int(rng.integers(1, C + 1)))
        gaps = 2.0 ** -rng.uniform(0, 40, len(k)) * rng.choice([0, 1, 1, 1], len(k))
        z[k] = z.max() - gaps
        if rng.random() < 0.3:
            z *= 10.0 ** rng.uniform(-3, 3)
        z = z.astype(dt)[None, :]
        kind = int(rng.integers(0, 4))
        if kind < 2:  # labels; half of them on the argmax
            t = np.array([int(np.argmax(z)) if rng.random() < 0.5 else int(rng.integers(0, C))])
        else:
            t = rng.dirichlet(np.full(C, 0.3)).astype(dt)[None, :]
        w = rng.uniform(0.1, 3.0, C).astype(dt) if kind % 2 else None
        if i % 4 == 3:  # past the short-row paths (C <= 32): masked classes around
            at = np.sort(rng.choice(40, C, replace=False))
            zz = np.full((1, 40), -np.inf, dt)
            zz[0, at] = z[0]
            z = zz
            if kind < 2:
                t = at[t]
            else:
                tt = np.zeros((1, 40), dt)
                tt[0, at] = t[0]
                t = tt
            if w is not None:
                ww = rng.uniform(0.1, 3.0, 40).astype(dt)
                ww[at] = w
                w = ww
        yield z, t, w
    yield np.array([[-6.0, 0.0, 0.015625, -6.0, -6.0]]), np.array([0]), None
    z = np.full((1, 7), -1e-30)  # e rounds to 1 off the max: not tied
    z[0, 3] = 0.0
    yield z, np.array([1]), None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_softmax_mse_near_max_classes(backend, seed):
    # A class just below the row max (z = [-6, 0, 2^-6, -6, -6], label 0) made
    # p_1 - p_max cancel 64x: every backend, the reference too, missed the
    # contract there (class 1: 326-926 ulp against 213).  Fixed by writing
    # p_k = p_max (1 + expm1(z_k - m)) on the near set (reference.py).
    for z, t, w in _near_max_rows(seed, 150):
        dt = z.dtype
        probs = t if t.dtype.kind == "f" else None
        labels = None if probs is not None else t
        exact = oracle.softmax_rows("softmax_mse", z.astype(np.float64), labels=labels, probs=probs, w=w)
        l, g = fastloss.softmax_mse(z, t, weight=w, reduction="none", return_grad=True, backend=backend)
        what = f"{backend} softmax_mse z={z.tolist()} t={t.tolist()} w={w}"
        assert_contract(l, exact[0], exact[2], dt, what=what + " loss")
        assert_contract(g, exact[1], exact[3], dt, what=what + " grad")
