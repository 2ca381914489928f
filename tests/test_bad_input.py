"""Bad input raises the right error, naming the argument, and writes nothing.

Every case that passes ``out=`` fills it with a sentinel first and checks it
is untouched after the error.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from fastloss import _backends
from tests.conftest import ALL_OPS, ELEMENTWISE, SOFTMAX, spy_backends

SENTINEL = 12345.0


def good(op, dtype=np.float32):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 5)).astype(dtype)
    t = rng.integers(0, 5, 4) if op in SOFTMAX else rng.random((4, 5)).astype(dtype)
    return z, t


def raises_untouched(exc, match, op, z, t, **kw):
    """Call with a sentinel-filled out=; assert ``exc`` matching ``match``, out untouched."""
    out = kw.pop("out", None)
    if out is None:
        out = np.full(np.shape(z), SENTINEL, dtype=np.asarray(z).dtype if np.asarray(z).dtype.kind == "f" else np.float32)
    else:
        out.fill(SENTINEL)
    kw.setdefault("return_grad", True)
    with pytest.raises(exc, match=match):
        getattr(fastloss, op)(z, t, out=out, **kw)
    assert (out == SENTINEL).all(), "out was written before the error"


@pytest.mark.parametrize("op", ALL_OPS)
def test_shape_mismatch(backend, op):
    z, t = good(op)
    bad_t = t[:-1] if op in SOFTMAX else t[:, :-1]
    raises_untouched(ValueError, "target", op, z, bad_t, backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
def test_probability_target_shape_mismatch(backend, op):
    z, _ = good(op)
    raises_untouched(ValueError, "probability target", op, z, np.ones((4, 4), dtype=np.float32), backend=backend)


@pytest.mark.parametrize("tdtype", [np.complex128, np.str_, object])
@pytest.mark.parametrize("op", ALL_OPS)
def test_wrong_target_dtype(backend, op, tdtype):
    z, t = good(op)
    bad = np.asarray(t).astype(tdtype)
    raises_untouched(TypeError, "target", op, z, bad, backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
def test_bool_labels_rejected(backend, op):
    z, t = good(op)
    raises_untouched(TypeError, "target", op, z, t.astype(bool), backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
@pytest.mark.parametrize("bad", [5, -1, 99, -101])
def test_labels_out_of_range(backend, op, bad):
    z, t = good(op)
    t = t.copy()
    t[2] = bad
    raises_untouched(ValueError, rf"label {bad} at position \(2,\)", op, z, t, backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
def test_labels_out_of_range_nd_position(backend, op):
    z = np.zeros((2, 3, 4), dtype=np.float32)
    t = np.zeros((2, 3), dtype=np.int64)
    t[1, 2] = 4
    t[1, 0] = -1 if op == "softmax_mse" else 4  # the first in C order is (1, 0)
    with pytest.raises(ValueError, match=r"at position \(1, 0\)"):
        getattr(fastloss, op)(z, t, backend=backend)


@pytest.mark.parametrize("reduction", ["avg", "MEAN", None, 1, ""])
@pytest.mark.parametrize("op", ALL_OPS)
def test_bad_reduction(backend, op, reduction):
    z, t = good(op)
    raises_untouched(ValueError, "reduction must be one of 'mean', 'sum', 'none'", op, z, t,
                     reduction=reduction, backend=backend)


@pytest.mark.parametrize("op", ALL_OPS)
def test_out_wrong_shape_dtype_readonly_type(backend, op):
    z, t = good(op)
    raises_untouched(ValueError, "out must have the logits' shape", op, z, t,
                     out=np.empty((5, 4), dtype=np.float32), backend=backend)
    raises_untouched(TypeError, "out must have dtype", op, z, t, out=np.empty((4, 5), dtype=np.float64),
                     backend=backend)
    ro = np.full((4, 5), SENTINEL, dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        getattr(fastloss, op)(z, t, return_grad=True, out=ro, backend=backend)
    assert (ro == SENTINEL).all()
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        getattr(fastloss, op)(z, t, return_grad=True, out=[[0.0] * 5] * 4, backend=backend)


@pytest.mark.parametrize("op", ALL_OPS)
def test_out_partially_overlapping_logits(backend, op):
    buf = np.random.default_rng(0).standard_normal(30).astype(np.float32)
    z = buf[:20].reshape(4, 5)
    out = buf[5:25].reshape(4, 5)  # overlaps z shifted by one row
    t = np.zeros(4, dtype=np.int64) if op in SOFTMAX else np.zeros((4, 5), dtype=np.float32)
    before = buf.copy()
    with pytest.raises(ValueError, match="out overlaps logits"):
        getattr(fastloss, op)(z, t, return_grad=True, out=out, backend=backend)
    np.testing.assert_array_equal(buf, before)
    # same start, other strides (a transposed view of a square block) is partial too
    sq = np.zeros((5, 5), dtype=np.float32)
    if op in ELEMENTWISE:
        with pytest.raises(ValueError, match="out overlaps logits"):
            getattr(fastloss, op)(sq, np.zeros((5, 5), np.float32), return_grad=True, out=sq.T, backend=backend)


@pytest.mark.parametrize("op", ALL_OPS)
def test_out_aliasing_target_or_weight(backend, op):
    z = np.zeros((4, 5), dtype=np.float32)
    if op in SOFTMAX:
        t = np.full((4, 5), 0.2, dtype=np.float32)
    else:
        t = np.zeros((4, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="shares memory with target"):
        getattr(fastloss, op)(z, t, return_grad=True, out=t, backend=backend)
    w = np.ones((4, 5), dtype=np.float32) if op in ELEMENTWISE else None
    if w is not None:
        with pytest.raises(ValueError, match="shares memory"):
            getattr(fastloss, op)(z, t, weight=w, return_grad=True, out=w, backend=backend)
        assert (w == 1).all()


@pytest.mark.parametrize("op", ALL_OPS)
def test_weight_wrong_shape(backend, op):
    z, t = good(op)
    raises_untouched(ValueError, "weight", op, z, t, weight=np.ones(4, dtype=np.float32), backend=backend)
    raises_untouched(ValueError, "weight", op, z, t, weight=np.ones((2, 4, 5), dtype=np.float32), backend=backend)
    raises_untouched(TypeError, "weight", op, z, t, weight=np.array(["a"] * 5), backend=backend)


def test_pos_weight_wrong_shape(backend):
    z, t = good("sigmoid_bce")
    raises_untouched(ValueError, "pos_weight", "sigmoid_bce", z, t, pos_weight=np.ones(3), backend=backend)
    raises_untouched(TypeError, "pos_weight", "sigmoid_bce", z, t, pos_weight=np.ones(5, dtype=complex),
                     backend=backend)


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf")])
def test_label_smoothing_outside_unit_interval(backend, eps):
    z, t = good("softmax_cross_entropy")
    raises_untouched(ValueError, "label_smoothing must be in", "softmax_cross_entropy", z, t,
                     label_smoothing=eps, backend=backend)


def test_label_smoothing_wrong_type(backend):
    z, t = good("softmax_cross_entropy")
    raises_untouched(TypeError, "label_smoothing", "softmax_cross_entropy", z, t,
                     label_smoothing="0.1x", backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
def test_bad_axis(backend, op):
    z, t = good(op)
    raises_untouched(ValueError, "axis 2 is out of bounds", op, z, t, axis=2, backend=backend)
    raises_untouched(ValueError, "axis -3 is out of bounds", op, z, t, axis=-3, backend=backend)
    raises_untouched(TypeError, "axis must be an int", op, z, t, axis=1.0, backend=backend)
    raises_untouched(TypeError, "axis must be an int", op, z, t, axis=(0, 1), backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
def test_bad_ignore_index(backend, op):
    z, t = good(op)
    raises_untouched(TypeError, "ignore_index must be an int", op, z, t, ignore_index=1.5, backend=backend)


@pytest.mark.parametrize("ldtype", [np.int32, np.int64, np.uint8, bool, np.complex64, np.longdouble])
@pytest.mark.parametrize("op", ALL_OPS)
def test_non_float_logits_type_error(backend, op, ldtype):
    if np.dtype(ldtype) == np.dtype(np.float64):  # longdouble is float64 on some platforms
        pytest.skip("longdouble is float64 here")
    z, t = good(op)
    zi = z.astype(ldtype)
    with pytest.raises(TypeError, match="logits must be a float16, float32 or float64"):
        getattr(fastloss, op)(zi, t, backend=backend)
    with pytest.raises(TypeError, match="logits must be a float16"):
        getattr(fastloss, op)(zi.tolist(), t, backend=backend)  # lists of ints too


@pytest.mark.parametrize("op", ALL_OPS)
def test_out_without_return_grad(backend, op):
    z, t = good(op)
    raises_untouched(ValueError, "return_grad=True", op, z, t, return_grad=False, backend=backend)
    raises_untouched(TypeError, "return_grad must be a bool", op, z, t, return_grad=1, backend=backend)


@pytest.mark.parametrize("op", SOFTMAX)
def test_zero_dim_logits_for_softmax(backend, op):
    with pytest.raises(ValueError, match="at least one dimension"):
        getattr(fastloss, op)(np.float32(1.0), np.int64(0), backend=backend)


# --------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------
def test_unknown_backend_name():
    z, t = good("mse")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastloss.mse(z, t, backend="fortran")


def test_explicit_unavailable_backend_raises(monkeypatch):
    monkeypatch.setenv("FASTLOSS_DISABLE", "c")
    z, t = good("mse")
    with pytest.raises(fastloss.BackendUnavailable, match="'c'"):
        fastloss.mse(z, t, backend="c")
    assert issubclass(fastloss.BackendUnavailable, RuntimeError)


def test_disable_hides_backends(monkeypatch):
    monkeypatch.setenv("FASTLOSS_DISABLE", "numba, c,cuda")
    assert fastloss.available_backends() == ["numpy"]
    z, t = good("mse")
    assert fastloss.mse(z, t) == fastloss.mse(z, t, backend="numpy")  # automatic choice falls back
    monkeypatch.setenv("FASTLOSS_DISABLE", "numpy")
    assert "numpy" not in fastloss.available_backends()


def test_env_selects_default_backend(monkeypatch):
    calls = []
    ref = _backends.load("numpy")
    real = ref.elementwise

    def spy(*args):
        calls.append("numpy")
        return real(*args)

    monkeypatch.setattr(ref, "elementwise", spy)
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")
    z, t = good("mse")
    fastloss.mse(z, t)
    assert calls == ["numpy"]
    # an env-selected backend that cannot run raises, like an explicit one
    monkeypatch.setenv("FASTLOSS_DISABLE", "numpy")
    with pytest.raises(fastloss.BackendUnavailable):
        fastloss.mse(z, t)
    monkeypatch.setenv("FASTLOSS_BACKEND", "nonsense")
    monkeypatch.delenv("FASTLOSS_DISABLE")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastloss.mse(z, t)


def test_env_in_fresh_process():
    """FASTLOSS_DISABLE/FASTLOSS_BACKEND are read by a fresh interpreter too."""
    env = dict(os.environ, FASTLOSS_DISABLE="numba,c,cuda", FASTLOSS_BACKEND="numpy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = "import fastloss; print(fastloss.available_backends())"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['numpy']"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("op", ALL_OPS)
def test_automatic_choice_follows_the_per_op_order(monkeypatch, op, dtype):
    """backend=None runs the first available backend of auto_order(op, compute dtype),
    and auto_backend names it; hiding that backend moves to the next one."""
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)
    monkeypatch.delenv("FASTLOSS_DISABLE", raising=False)
    cdt = np.float32 if dtype == np.float16 else dtype
    order = _backends.auto_order(op, cdt)
    assert sorted(order) == ["c", "numba", "numpy"]
    calls = spy_backends(monkeypatch)
    z, t = good(op, dtype)
    avail = fastloss.available_backends()
    expect = [b for b in order if b in avail]
    getattr(fastloss, op)(z, t, return_grad=True)
    assert calls == [expect[0]]
    assert fastloss.auto_backend(op, dtype) == expect[0]
    monkeypatch.setenv("FASTLOSS_DISABLE", expect[0])
    calls.clear()
    getattr(fastloss, op)(z, t, return_grad=True)
    assert calls == [expect[1]]
    assert fastloss.auto_backend(op, dtype) == expect[1]
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")  # the environment's choice wins
    assert fastloss.auto_backend(op, dtype) == "numpy"


def test_automatic_order_per_op():
    """The measured preference (README, Backends): C first, numba first for the
    float32 sigmoid ops."""
    for op in ALL_OPS:
        for dtype in (np.float32, np.float64):
            numba_first = op in ("sigmoid_mse", "sigmoid_bce") and dtype == np.float32
            assert _backends.auto_order(op, dtype) == (("numba", "c", "numpy") if numba_first
                                                       else ("c", "numba", "numpy")), (op, dtype)


def test_auto_backend_bad_arguments():
    with pytest.raises(ValueError, match="op must be one of"):
        fastloss.auto_backend("hinge")
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        fastloss.auto_backend("mse", np.int64)
