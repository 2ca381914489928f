"""Conformance with PyTorch (CPU) on ordinary inputs, every option combination.

Loss and gradient (torch autograd) for: reduction x weight x pos_weight x
ignore_index x label_smoothing x labels/probabilities, with PyTorch's layout
(class axis 1, extra dims: (N, C, d1, d2)).  softmax_mse and sigmoid_mse have
no torch function: they are composed from torch ops.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastloss
from tests.conftest import ELEMENTWISE, SOFTMAX

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]
NCHW = (4, 5, 3, 2)  # (N, C, d1, d2)


def _tol(dtype):
    from tests.tolerances import TORCH

    return TORCH[np.dtype(dtype)]


def torch_loss_grad(fn, z, reduction):
    """(loss, d loss/dz) from autograd; 'none' differentiates the sum."""
    zt = torch.tensor(z, requires_grad=True)
    loss = fn(zt)
    (loss.sum() if reduction == "none" else loss).backward()
    return loss.detach().numpy(), zt.grad.numpy()


def compare(ours, theirs, dtype, what):
    tol = _tol(dtype)
    np.testing.assert_allclose(np.asarray(ours[0], dtype=np.float64), theirs[0], err_msg=what + " loss", **tol)
    np.testing.assert_allclose(ours[1], theirs[1], err_msg=what + " grad", **tol)


# --------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------
def _torch_elementwise(op, y, w, pw, reduction):
    yt = torch.tensor(y)
    wt = None if w is None else torch.tensor(w)
    pwt = None if pw is None else torch.tensor(pw)

    def fn(zt):
        if op == "sigmoid_bce":
            return F.binary_cross_entropy_with_logits(zt, yt, weight=wt, pos_weight=pwt, reduction=reduction)
        pred = zt if op == "mse" else torch.sigmoid(zt)
        if op == "mse":  # torch wants the weight at full size (same mean: sum of broadcast weights)
            full = None if wt is None else torch.broadcast_to(wt, zt.shape)
            return F.mse_loss(pred, yt, reduction=reduction, weight=full)
        # sigmoid_mse composed: weighted squared error, mean over the broadcast weights
        per = (pred - yt) ** 2
        if wt is not None:
            per = per * wt
        if reduction == "none":
            return per
        if reduction == "sum":
            return per.sum()
        denom = torch.broadcast_to(wt, per.shape).sum() if wt is not None else per.numel()
        return per.sum() / denom

    return fn


def _param(kind, shape, dtype, lo, hi):
    if kind is None:
        return None
    if kind == "class":  # along the last axis
        return np.linspace(lo, hi, shape[-1]).astype(dtype)
    if kind == "scalar":
        return np.asarray(0.5 * (lo + hi), dtype=dtype)
    return np.linspace(lo, hi, int(np.prod(shape))).reshape(shape).astype(dtype)


# pos_weight exists for sigmoid_bce only
ELEMENTWISE_COMBOS = [(op, pw) for op in ELEMENTWISE
                      for pw in ([None, "class", "full"] if op == "sigmoid_bce" else [None])]


@pytest.mark.parametrize("weight", [None, "class", "full", "scalar"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,pos_weight", ELEMENTWISE_COMBOS)
def test_elementwise_vs_torch(backend, op, dtype, reduction, weight, pos_weight):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal(NCHW) * 3).astype(dtype)
    y = (rng.standard_normal(NCHW) if op == "mse" else rng.random(NCHW)).astype(dtype)
    w = _param(weight, NCHW, dtype, 0.0, 2.0)
    pw = _param(pos_weight, NCHW, dtype, 0.5, 3.0)
    kw = {"weight": w}
    if op == "sigmoid_bce":
        kw["pos_weight"] = pw
    ours = getattr(fastloss, op)(z, y, reduction=reduction, return_grad=True, backend=backend, **kw)
    theirs = torch_loss_grad(_torch_elementwise(op, y, w, pw, reduction), z, reduction)
    compare(ours, theirs, dtype, f"{op} {reduction} w={weight} pw={pos_weight}")


# --------------------------------------------------------------------------
# softmax, class axis 1
# --------------------------------------------------------------------------
def _torch_softmax_mse(t, w, ignore_index, reduction, probs):
    """sum_k w_k (softmax(z)_k - t_k)^2 over dim 1; mean over non-ignored rows."""

    def fn(zt):
        p = torch.softmax(zt, dim=1)
        if probs:
            tt, valid = torch.tensor(t), torch.ones(t.shape[:1] + t.shape[2:], dtype=torch.bool)
        else:
            lab = torch.tensor(t)
            valid = lab != ignore_index
            safe = torch.where(valid, lab, torch.zeros_like(lab))
            tt = F.one_hot(safe, p.shape[1]).movedim(-1, 1).to(p.dtype)
        d2 = (p - tt) ** 2
        if w is not None:
            d2 = d2 * torch.tensor(w).reshape((1, -1) + (1,) * (p.ndim - 2))
        per = torch.where(valid, d2.sum(dim=1), torch.zeros((), dtype=p.dtype))
        if reduction == "none":
            return per
        if reduction == "sum":
            return per.sum()
        n = valid.sum()
        return per.sum() / n if n else per.sum() * 0

    return fn


# (reduction, weight, ignore_index, label_smoothing, probs); ignore_index only with labels
CE_COMBOS = [c for c in itertools.product(REDUCTIONS, [False, True], [None, -100, 2], [0.0, 0.2], [False, True])
             if not (c[4] and c[2] is not None)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction,use_weight,ignore_index,eps,probs", CE_COMBOS)
def test_cross_entropy_vs_torch(backend, dtype, reduction, use_weight, ignore_index, eps, probs):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal(NCHW) * 3).astype(dtype)
    C = NCHW[1]
    if probs:
        t = rng.random(NCHW)
        t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(0, C, (NCHW[0],) + NCHW[2:])
        if ignore_index is not None:
            t.reshape(-1)[::3] = ignore_index
    w = np.linspace(0.5, 2.0, C).astype(dtype) if use_weight else None
    ii = -100 if ignore_index is None else ignore_index
    ours = fastloss.softmax_cross_entropy(z, t, axis=1, weight=w, ignore_index=ii, label_smoothing=eps,
                                          reduction=reduction, return_grad=True, backend=backend)
    tt = torch.tensor(t)
    wt = None if w is None else torch.tensor(w)
    theirs = torch_loss_grad(
        lambda zt: F.cross_entropy(zt, tt, weight=wt, ignore_index=ii, reduction=reduction, label_smoothing=eps),
        z, reduction)
    compare(ours, theirs, dtype, f"CE {reduction} w={use_weight} ii={ignore_index} eps={eps} probs={probs}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ignore_index,probs", [(None, False), (1, False), (None, True)])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_mse_vs_torch(backend, dtype, reduction, use_weight, ignore_index, probs):
    rng = np.random.default_rng(2)
    z = (rng.standard_normal(NCHW) * 3).astype(dtype)
    C = NCHW[1]
    if probs:
        t = rng.random(NCHW)
        t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(0, C, (NCHW[0],) + NCHW[2:])
    w = np.linspace(0.5, 2.0, C).astype(dtype) if use_weight else None
    ii = -100 if ignore_index is None else ignore_index
    ours = fastloss.softmax_mse(z, t, axis=1, weight=w, ignore_index=ii, reduction=reduction,
                                return_grad=True, backend=backend)
    theirs = torch_loss_grad(_torch_softmax_mse(t, w, ii, reduction, probs), z, reduction)
    compare(ours, theirs, dtype, f"softmax_mse {reduction} w={use_weight} ii={ignore_index} probs={probs}")


@pytest.mark.parametrize("op", SOFTMAX)
def test_all_ignored_mean_deviates_from_torch_nan(backend, op):
    """Documented deviation: torch returns NaN (0/0), fastloss 0.0 with zero grad."""
    z = np.random.default_rng(3).standard_normal((3, 4))
    t = np.full(3, -100)
    if op == "softmax_cross_entropy":
        assert torch.isnan(F.cross_entropy(torch.tensor(z), torch.tensor(t)))
    loss, grad = getattr(fastloss, op)(z, t, return_grad=True, backend=backend)
    assert loss == 0.0 and (grad == 0).all()
