"""CUDA kernels vs the 60-digit mpmath oracle on tiny extreme cases.

The other simulator tests compare with fastloss.reference; these hold the
kernels to the stability contract itself (ORACLE_ULPS * (1 + kappa) ulp, no
spurious NaN/inf/0), on the inputs that motivated the reference's formulas:
y = 1/2 at z ~ 0, weight-first mse, rows tied with the max, 1e308 rows.
"""
import numpy as np
import pytest

from fastloss import _cuda, oracle
from tests.tolerances import assert_contract

DTYPES = [np.float32, np.float64]

ELEMENTWISE = {
    # op: (z, y, w, pw); grad at scale 1 (the oracle's)
    "sigmoid_mse_half": ("sigmoid_mse", [1e-30, -1e-30, 0.0, 0.3, -0.7, 1e-8, 40.0, -40.0],
                         [0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0], None, None),
    "sigmoid_bce_half_pw": ("sigmoid_bce", [1e-30, -1e-30, 0.3, -0.7, 2e-20, -5.0, 30.0, -30.0],
                            [0.5, 0.5, 0.5, 0.25, 0.5, 1.0, 0.0, 1.0], None,
                            [1.0, 3.0, 0.5, 2.0, 1.0, 2.0, 1.0, 0.5]),
    # weight first: w d and (w d) d stay finite where d*d overflows; w = 0 masks
    # weight first: w d and (w d) d stay finite where d*d overflows; w = 0 masks
    # (B is the dtype's scale: 1e300 or 1e38, 1/B subnormal for float32)
    "mse_weight_first": ("mse", ["B", "-B", "B", 1.0, 5.0, 1e-30],
                         ["-B", "B", 0.0, 1.0 + 2.0 ** -20, 2.0, 0.0],
                         ["1/B", "3/B", 2.0, 2.0, 0.0, 0.5], None),
}


@pytest.mark.parametrize("case", list(ELEMENTWISE))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_elementwise_contract(case, dtype):
    op, z, y, w, pw = ELEMENTWISE[case]
    big = 1e300 if dtype == np.float64 else 1e38
    sub = {"B": big, "-B": -big, "1/B": 1 / big, "3/B": 3 / big}
    z, y, w = ([sub.get(v, v) for v in a] if a is not None else None for a in (z, y, w))
    with np.errstate(over="ignore", under="ignore"):
        z, y = np.array(z, dtype), np.array(y, dtype)
        w = None if w is None else np.array(w, dtype)
        pw = None if pw is None else np.array(pw, dtype)
    grad, loss = np.empty_like(z), np.empty_like(z)
    total = _cuda.elementwise(op, z, y, w, pw, grad, loss, 1.0)
    l, g, kl, kg = oracle.elementwise(op, z, y, w, pw)
    assert_contract(loss, l, kl, dtype, what=f"{case} loss")
    assert_contract(grad, g, kg, dtype, what=f"{case} grad")
    # the total sums the float64 losses before their rounding to dtype (which
    # may overflow float32): compare with the oracle's float64 values
    assert total == pytest.approx(float(np.sum(l)), rel=float(np.finfo(dtype).eps))


def _softmax_cases(dtype):
    big = 1e308 if dtype == np.float64 else 3e38
    rng = np.random.default_rng(7)
    probs = rng.random((3, 4))
    probs /= probs.sum(axis=1, keepdims=True)
    w = np.array([1.0, 2.5, 0.5, 3.0])
    tied = [[-40.0, 0.0, 0.0, 0.0], [0.0, 0.0, -40.0, -40.0], [0.0, -745.0, 0.0, -30.0]]
    return {
        # tiny gradients of rows tied with the max (cancel to noise in sum-then-subtract)
        "mse_tied_labels": ("softmax_mse", tied, [0, 2, 1], None, None, 0.0),
        "mse_tied_probs_weight": ("softmax_mse", tied, None, probs, w, 0.0),
        # z - m overflows for finite z: loss term 2 a (z/2 - m/2)
        "ce_huge_probs": ("softmax_cross_entropy", [[big, -big, 0.0, 1.0], [-big, big, big, 0.0],
                                                    [1e7 + 1, 1e7, 1e7, -big]], None, probs, None, 0.0),
        # argmax gradient = sum of the other classes' a - A q
        "ce_smooth_weight": ("softmax_cross_entropy", [[1e7 + 1, 1e7, 1e7, 0.0], [60.0, 0.0, -3.0, 1.0],
                                                       [0.0, 0.0, 0.0, 0.0]], [0, 1, 3], None, w, 0.1),
    }


@pytest.mark.parametrize("case", ["mse_tied_labels", "mse_tied_probs_weight", "ce_huge_probs", "ce_smooth_weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_softmax_contract(case, dtype):
    op, z, labels, probs, w, eps = _softmax_cases(dtype)[case]
    z = np.array(z, dtype)
    labels = None if labels is None else np.array(labels, np.int64)
    probs = None if probs is None else probs.astype(dtype)
    w = None if w is None else w.astype(dtype)
    grad, loss = np.empty_like(z), np.empty(z.shape[0])
    _cuda.softmax_rows(op, z, labels, probs, w, -100, eps, grad, loss, 1.0)
    l, g, kl, kg = oracle.softmax_rows(op, z, labels=labels, probs=probs, w=w, smoothing=eps)
    assert_contract(loss, l, kl, dtype, what=f"{case} loss")
    assert_contract(grad, g, kg, dtype, what=f"{case} grad")
