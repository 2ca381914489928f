"""CUDA softmax-row kernels vs fastloss.reference (simulator or GPU)."""
import numpy as np
import pytest

from fastloss import _cuda, oracle, reference
from simcheck import assert_close, softmax_inputs
from tests.tolerances import assert_contract

DTYPES = [np.float32, np.float64]


def _run(mod, op, z, labels, probs, w, ignore_index, eps, grad, inplace, scale=0.25):
    z = z.copy()
    R = z.shape[0]
    g = (z if inplace else np.empty_like(z)) if grad else None
    loss = np.empty(R)
    mod.softmax_rows(op, z, labels, probs, w, ignore_index, eps, g, loss, scale)
    return loss, g


CASES = {
    # name: (op, labels?, class weight?, smoothing, grad, in place, ignore_index)
    "ce_labels": ("softmax_cross_entropy", True, False, 0.0, True, False, -100),
    "ce_labels_weight_smooth_inplace": ("softmax_cross_entropy", True, True, 0.1, True, True, 3),
    "ce_probs_weight_smooth": ("softmax_cross_entropy", False, True, 0.2, True, False, -100),
    "ce_labels_loss_only": ("softmax_cross_entropy", True, False, 0.0, False, False, -100),
    "mse_labels": ("softmax_mse", True, False, 0.0, True, False, -100),
    "mse_labels_weight_inplace": ("softmax_mse", True, True, 0.0, True, True, -100),
    "mse_probs_weight": ("softmax_mse", False, True, 0.0, True, False, -100),
}


def _check(case, dtype, C):
    op, use_labels, use_w, eps, grad, inplace, ignore = CASES[case]
    z, labels, probs = softmax_inputs(dtype, C)
    labels[labels == -100] = ignore
    w = None
    if use_w:
        w = (np.random.default_rng(3).random(C) + 0.25).astype(dtype)
        w[1 % C] = 0.0  # a zero class weight masks that class exactly
    args = (labels, None) if use_labels else (None, probs)
    want = _run(reference, op, z, *args, w, ignore, eps, grad, inplace)
    got = _run(_cuda, op, z, *args, w, ignore, eps, grad, inplace)
    assert_close(got[0], want[0], np.float64 if dtype == np.float64 else np.float32, f"{case} loss")
    if grad:
        assert_close(got[1], want[1], dtype, f"{case} grad")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_reference(case, dtype):
    _check(case, dtype, 70)  # C not a multiple of the block: ragged chunks


@pytest.mark.parametrize("C", [2, 128])
@pytest.mark.parametrize("case", ["ce_labels_weight_smooth_inplace", "mse_probs_weight"])
def test_class_counts(case, C):
    _check(case, np.float64, C)


@pytest.mark.parametrize("case", ["ce_probs_weight_smooth", "mse_labels_weight_inplace", "ce_labels"])
def test_online_rescaling_rows(case):
    # float32 rows take the online (rescaling) path: every element a new max,
    # -inf prefixes before the first finite max, +inf after finite maxima, ties
    C = 70
    z = np.tile(np.linspace(-50.0, 50.0, C), (6, 1))
    z[1, : C // 2] = -np.inf
    z[2, -1] = np.inf
    z[3] = z[3, ::-1]
    z[4, ::3] = 50.0  # many tied maxima spread over threads
    z[5, : C // 2] = -np.inf
    z[5, -3:] = np.inf
    op, use_labels, use_w, eps, grad, inplace, ignore = CASES[case]
    labels = np.array([0, C - 1, 5, C - 1, 3, C - 2])
    probs = np.random.default_rng(2).random((6, C))
    probs[[1, 5], : C // 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    z, probs = z.astype(np.float32), probs.astype(np.float32)
    w = np.linspace(0.5, 2.0, C).astype(np.float32) if use_w else None
    args = (labels, None) if use_labels else (None, probs)
    want = _run(reference, op, z, *args, w, ignore, eps, grad, inplace)
    got = _run(_cuda, op, z, *args, w, ignore, eps, grad, inplace)
    assert_close(got[0], want[0], np.float32, "loss")
    assert_close(got[1], want[1], np.float32, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_mse_near_max_rows_inplace(dtype):
    # classes just below the max, not tied ([-6, 0, 2^-6], -1e-30 next to 0):
    # the near set's p_max (1 + expm1(z - m)) form, with grad aliasing z.
    # Held to the oracle contract, not to the reference: with weights, the
    # gradient of [-6, 0, 2^-6] is conditioned by w_1 - w_2 (kappa ~320), where
    # two correct roundings of the same formula differ by more than RTOL.
    C = 40
    z = np.full((5, C), -40.0)
    z[0, :] = -6.0
    z[0, [1, 2]] = 0.0, 2.0 ** -6
    z[1, :] = -1e-30
    z[1, 33] = 0.0
    z[2, [0, 5, 36]] = 0.0, -2.0 ** -20, 0.0  # ties across the block's chunks
    z[3, [3, 34, 35]] = -0.3, 0.0, -0.5  # inside and outside z - m >= -ln2/2
    z[4, [2, 37]] = -1e-12, 0.0  # the gap alone sets the gradient (float32 too)
    z = z.astype(dtype)
    labels = np.array([0, 1, 36, 3, 0])
    w = np.linspace(0.5, 2.0, C).astype(dtype)
    for ww in (None, w):
        loss, grad = _run(_cuda, "softmax_mse", z, labels, None, ww, -100, 0.0, True, True, scale=1.0)
        l, g, kl, kg = oracle.softmax_rows("softmax_mse", z.astype(np.float64), labels=labels, w=ww)
        what = "weight" if ww is not None else "no weight"
        assert_contract(loss, l, kl, dtype, what=f"near-max loss, {what}")
        assert_contract(grad, g, kg, dtype, what=f"near-max grad (in place), {what}")
