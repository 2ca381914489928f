"""Central finite differences (float64) for every op and option.

The gradient returned with the loss must be the derivative of that same loss:
for 'mean' and 'sum' of the reduced scalar, for 'none' of each element's /
row's own loss (the sum of the per-element losses, since each depends on its
own logits only).
"""
from __future__ import annotations

import numpy as np
import pytest

import fastloss
from tests.conftest import ELEMENTWISE, SOFTMAX
from tests.tolerances import GRADCHECK

SHAPE = (3, 5)


def numeric_grad(f, z):
    """Central differences, step relative to |z|: O(h^2) truncation."""
    g = np.empty_like(z)
    for i in np.ndindex(z.shape):
        h = 1e-6 * max(1.0, abs(z[i]))
        zp, zm = z.copy(), z.copy()
        zp[i] += h
        zm[i] -= h
        g[i] = (f(zp) - f(zm)) / (zp[i] - zm[i])  # the step actually taken
    return g


def _scalar(op, t, backend, reduction, kw):
    def f(z):
        loss = getattr(fastloss, op)(z, t, reduction=reduction, backend=backend, **kw)
        return float(np.sum(loss))  # 'none': each grad entry is d(own loss)/dz = d(sum)/dz

    return f


def gradcheck(op, z, t, backend, **kw):
    for reduction in ("mean", "sum", "none"):
        _, grad = getattr(fastloss, op)(z, t, reduction=reduction, return_grad=True, backend=backend, **kw)
        num = numeric_grad(_scalar(op, t, backend, reduction, kw), z)
        np.testing.assert_allclose(grad, num, rtol=GRADCHECK["rtol"], atol=GRADCHECK["atol"],
                                   err_msg=f"{op} reduction={reduction} {sorted(kw)}")


ELEMENTWISE_KW = {
    "plain": {},
    "weight": {"weight": np.array([0.5, 1.0, 2.0, 0.0, 3.0])},
    "weight_full": {"weight": np.linspace(0.1, 2.0, 15).reshape(SHAPE)},
    "pos_weight": {"pos_weight": np.array([0.5, 1.0, 2.0, 4.0, 1.5])},
    "both": {"pos_weight": np.array([2.0]), "weight": np.linspace(0.1, 2.0, 15).reshape(SHAPE)},
}


@pytest.mark.parametrize("op,option", [(op, opt) for op in ELEMENTWISE for opt in ELEMENTWISE_KW
                                       if op == "sigmoid_bce" or "pos_weight" not in ELEMENTWISE_KW[opt]])
def test_elementwise_gradcheck(backend, op, option):
    rng = np.random.default_rng(1)
    z = rng.standard_normal(SHAPE) * 2
    t = rng.random(SHAPE) if op != "mse" else rng.standard_normal(SHAPE)
    gradcheck(op, z, t, backend, **ELEMENTWISE_KW[option])


SOFTMAX_KW = {
    "labels": ({}, False),
    "probs": ({}, True),
    "weight": ({"weight": np.array([0.5, 1.0, 2.0, 0.25, 3.0])}, False),
    "probs_weight": ({"weight": np.array([0.5, 1.0, 2.0, 0.25, 3.0])}, True),
    "ignore": ({"ignore_index": 2}, False),
    "smooth": ({"label_smoothing": 0.2}, False),
    "smooth_ignore_weight": ({"label_smoothing": 0.15, "ignore_index": -100,
                              "weight": np.array([0.5, 1.0, 2.0, 0.25, 3.0])}, False),
    "probs_smooth": ({"label_smoothing": 0.3}, True),
    "masked_class": ({}, False),
}


@pytest.mark.parametrize("op,option", [(op, opt) for op in SOFTMAX for opt in SOFTMAX_KW
                                       if op == "softmax_cross_entropy" or "label_smoothing" not in SOFTMAX_KW[opt][0]])
def test_softmax_gradcheck(backend, op, option):
    kw, probs = SOFTMAX_KW[option]
    rng = np.random.default_rng(2)
    z = rng.standard_normal((4, 5)) * 2
    if probs:
        t = rng.random((4, 5))
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = np.array([0, 2, 4, 1])
        if option == "smooth_ignore_weight":
            t[1] = -100
    if option == "masked_class":
        z[:, 3] = -np.inf  # a masked class: finite differences skip it (its grad is exactly 0)
        zf = z.copy()
        _, grad = getattr(fastloss, op)(z, t, reduction="sum", return_grad=True, backend=backend)
        assert (grad[:, 3] == 0).all()
        live = [0, 1, 2, 4]

        def f(zl):
            zz = zf.copy()
            zz[:, live] = zl
            return float(fastloss.__dict__[op](zz, t, reduction="sum", backend=backend))

        np.testing.assert_allclose(grad[:, live], numeric_grad(f, z[:, live]), **GRADCHECK)
        return
    gradcheck(op, z, t, backend, **kw)


@pytest.mark.parametrize("op", SOFTMAX)
def test_softmax_gradcheck_axis0(backend, op):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((5, 2, 3))  # classes on axis 0
    t = rng.integers(0, 5, (2, 3))
    gradcheck(op, z, t, backend, axis=0)
