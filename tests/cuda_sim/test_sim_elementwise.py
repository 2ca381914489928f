"""CUDA elementwise kernels vs fastloss.reference (simulator or GPU)."""
import numpy as np
import pytest

from fastloss import _cuda, reference
from simcheck import assert_close, elementwise_inputs

DTYPES = [np.float32, np.float64]


def _run(mod, op, z, y, w, pw, scale, grad, loss, inplace):
    z = z.copy()
    g = (z if inplace else np.empty_like(z)) if grad else None
    per = np.empty_like(z) if loss else None
    total = mod.elementwise(op, z, y, w, pw, g, per, scale)
    return total, g, per


def _params(n, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    P = {"full": n, "class": 8, "scalar": 1}[kind]
    w = rng.random(P) * 2
    w[::3] = 0.0  # zero weights mask inf/NaN-free infinities exactly
    return w.astype(dtype)


CASES = {
    # name: (weight period, pos_weight period, scale, grad, loss, grad in place)
    "plain": (None, None, 1.0, True, True, False),
    "class_weight": ("class", "class", 1.0 / 128, True, True, False),
    "full_weight_inplace": ("full", None, 0.5, True, False, True),
    "scalar_weight_loss_only": ("scalar", "scalar", 1.0, False, True, False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", reference.ELEMENTWISE_OPS)
def test_matches_reference(op, dtype, case):
    wk, pwk, scale, grad, loss, inplace = CASES[case]
    z, y = elementwise_inputs(op, dtype)
    n = z.size
    w = None if wk is None else _params(n, dtype, wk, 1)
    pw = None if (pwk is None or op != "sigmoid_bce") else _params(n, dtype, pwk, 2) + dtype(0.5)
    want = _run(reference, op, z, y, w, pw, scale, grad, loss, inplace)
    got = _run(_cuda, op, z, y, w, pw, scale, grad, loss, inplace)
    if np.isfinite(want[0]):
        assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-300)
    else:
        assert np.isnan(want[0]) == np.isnan(got[0])
    if grad:
        assert_close(got[1], want[1], dtype, f"{op} grad")
    if loss:
        assert_close(got[2], want[2], dtype, f"{op} loss")


def test_reduction_is_deterministic():
    z, y = elementwise_inputs("sigmoid_bce", np.float64, n=300, seed=5)
    z[~np.isfinite(z)] = 0.0
    sums = {_cuda.elementwise("sigmoid_bce", z, y, None, None, None, None, 1.0) for _ in range(2)}
    assert len(sums) == 1
