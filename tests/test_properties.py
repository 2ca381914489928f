"""Hypothesis property tests (bounded, derandomized for reproducible CI)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss
from tests.conftest import ALL_OPS, ELEMENTWISE, HOST_BACKENDS, SOFTMAX
from tests.tolerances import MEAN_FLOOR, TOL, assert_close, assert_reduced

# backends by direct parametrization: hypothesis rejects function-scoped fixtures
BACKEND = pytest.mark.parametrize("backend", HOST_BACKENDS)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
FLOATS = st.floats(-30, 30, allow_nan=False, width=64)
DTYPE = st.sampled_from([np.float32, np.float64])


@st.composite
def softmax_case(draw, probs=None):
    """(z (R, C), target, weight or None, dtype) with ordinary values."""
    dtype = draw(DTYPE)
    R, C = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    z = draw(hnp.arrays(np.float64, (R, C), elements=FLOATS)).astype(dtype)
    use_probs = draw(st.booleans()) if probs is None else probs
    if use_probs:
        t = draw(hnp.arrays(np.float64, (R, C), elements=st.floats(0, 1)))
        t = (t + 1e-3) / (t + 1e-3).sum(axis=1, keepdims=True)
        t = t.astype(dtype)
    else:
        t = np.array(draw(st.lists(st.integers(0, C - 1), min_size=R, max_size=R)), dtype=np.int64)
    w = draw(st.none() | hnp.arrays(np.float64, (C,), elements=st.floats(0.1, 3)))
    return z, t, (None if w is None else w.astype(dtype)), dtype


@st.composite
def elementwise_case(draw):
    dtype = draw(DTYPE)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
    z = draw(hnp.arrays(np.float64, shape, elements=FLOATS)).astype(dtype)
    y = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1))).astype(dtype)
    w = draw(st.none() | hnp.arrays(np.float64, shape[-1:], elements=st.floats(0, 3)))
    return z, y, (None if w is None else w.astype(dtype)), dtype


@BACKEND
@pytest.mark.parametrize("op", SOFTMAX)
@SETTINGS
@given(case=softmax_case(), shift=st.sampled_from([-1000.0, -3.0, 7.5, 1024.0]))
def test_shift_invariance(backend, op, case, shift):
    """Adding a constant to a row changes nothing (exactly representable shifts)."""
    z, t, w, dtype = case
    z = (np.round(z.astype(np.float64) * 16) / 16).astype(dtype)  # on a 1/16 grid: z + shift is exact
    zs = z.astype(np.float64) + shift
    assert np.array_equal(zs.astype(dtype), zs)
    a = getattr(fastloss, op)(z, t, weight=w, reduction="none", return_grad=True, backend=backend)
    b = getattr(fastloss, op)(zs.astype(dtype), t, weight=w, reduction="none", return_grad=True, backend=backend)
    assert_close(b[0], a[0], dtype, what="shifted loss")
    assert_close(b[1], a[1], dtype, what="shifted grad")


@BACKEND
@pytest.mark.parametrize("op", SOFTMAX)
@SETTINGS
@given(case=softmax_case(probs=False), eps=st.sampled_from([0.0, 0.1]))
def test_labels_equal_one_hot_probs(backend, op, case, eps):
    z, t, w, dtype = case
    onehot = np.eye(z.shape[1], dtype=dtype)[t]
    kw = {"label_smoothing": eps} if op == "softmax_cross_entropy" else {}
    for red in ("none", "sum"):  # 'mean' differs on purpose: sum of w[y] vs rows
        a = getattr(fastloss, op)(z, t, weight=w, reduction=red, return_grad=True, backend=backend, **kw)
        b = getattr(fastloss, op)(z, onehot, weight=w, reduction=red, return_grad=True, backend=backend, **kw)
        assert_close(b[0], a[0], dtype, what=f"{red} loss")
        assert_close(b[1], a[1], dtype, what=f"{red} grad")


def _denominator(op, t, w, ignore_index=-100):
    """The documented 'mean' denominator (torch semantics)."""
    if t.dtype.kind == "f":
        return t.shape[0] if op in SOFTMAX else (t.size if w is None or op == "sigmoid_bce"
                                                  else float(np.broadcast_to(w.astype(np.float64), t.shape).sum()))
    valid = t[t != ignore_index]
    if op == "softmax_cross_entropy" and w is not None:
        return float(w.astype(np.float64)[valid].sum())
    return valid.size


def _check_sum_mean(backend, op, z, t, w, dtype):
    s, gs = getattr(fastloss, op)(z, t, weight=w, reduction="sum", return_grad=True, backend=backend)
    m, gm = getattr(fastloss, op)(z, t, weight=w, reduction="mean", return_grad=True, backend=backend)
    den = _denominator(op, t, w)
    if den == 0:
        assert m == 0.0 and (gm == 0).all()
        return
    floor = den * MEAN_FLOOR[np.dtype(dtype)]  # mean and its gradient rounded to the subnormal grid
    assert_reduced(np.float64(m) * den, s, dtype, what="mean * denominator", floor=floor)
    fin = np.abs(np.asarray(gs, np.float64))
    fin = fin[np.isfinite(fin)]
    atol = TOL[np.dtype(dtype)]["atol"] * (fin.max() if fin.size else 0.0) + floor
    assert_close(gm.astype(np.float64) * den, gs, dtype, what="grad mean * denominator", atol=atol, scale=1.0)


@BACKEND
@pytest.mark.parametrize("op", ALL_OPS)
@SETTINGS
@given(data=st.data())
def test_sum_equals_mean_times_denominator(backend, op, data):
    if op in SOFTMAX:
        z, t, w, dtype = data.draw(softmax_case())
    else:
        z, t, w, dtype = data.draw(elementwise_case())
    _check_sum_mean(backend, op, z, t, w, dtype)


@BACKEND
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_equals_mean_times_denominator_subnormal_mean(backend, dtype):
    # hypothesis found it: a loss sum of one subnormal step over 2 elements
    # has a mean that rounds to 0 in every backend (and in exact rounding)
    z = np.zeros(2, dtype)
    w = np.array([np.finfo(dtype).smallest_subnormal, 0], dtype)
    m = fastloss.sigmoid_bce(z, z, weight=w, reduction="mean", backend=backend)
    assert m == 0.0 and fastloss.sigmoid_bce(z, z, weight=w, reduction="sum", backend=backend) > 0
    _check_sum_mean(backend, "sigmoid_bce", z, z, w, dtype)


@BACKEND
@pytest.mark.parametrize("op", ALL_OPS)
@SETTINGS
@given(data=st.data())
def test_grad_none_equals_grad_sum(backend, op, data):
    """Each element's own derivative, summed over the (independent) losses, is the sum's."""
    if op in SOFTMAX:
        z, t, w, dtype = data.draw(softmax_case())
    else:
        z, t, w, dtype = data.draw(elementwise_case())
    ln, gn = getattr(fastloss, op)(z, t, weight=w, reduction="none", return_grad=True, backend=backend)
    ls, gs = getattr(fastloss, op)(z, t, weight=w, reduction="sum", return_grad=True, backend=backend)
    np.testing.assert_array_equal(gn, gs)
    assert_reduced(np.sum(ln, dtype=np.float64), ls, dtype, what="sum of 'none' losses")


@BACKEND
@pytest.mark.parametrize("op", ALL_OPS)
@SETTINGS
@given(data=st.data(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_in_place_equals_out_of_place(backend, op, data, reduction):
    if op in SOFTMAX:
        z, t, w, dtype = data.draw(softmax_case())
    else:
        z, t, w, dtype = data.draw(elementwise_case())
    a = getattr(fastloss, op)(z, t, weight=w, reduction=reduction, return_grad=True, backend=backend)
    zi = z.copy()
    b = getattr(fastloss, op)(zi, t, weight=w, reduction=reduction, return_grad=True, out=zi, backend=backend)
    assert b[1] is zi
    # equal within rounding: an in-place kernel may use grad as scratch
    if reduction == "none":
        assert_close(b[0], a[0], dtype, what="in-place loss")
    else:
        assert_reduced(b[0], a[0], dtype, what="in-place loss")
    assert_close(zi, a[1], dtype, what="in-place grad")


@BACKEND
@pytest.mark.parametrize("op", SOFTMAX)
@SETTINGS
@given(case=softmax_case(), seed=st.integers(0, 2**16))
def test_class_permutation_equivariance(backend, op, case, seed):
    z, t, w, dtype = case
    perm = np.random.default_rng(seed).permutation(z.shape[1])
    inv = np.argsort(perm)
    tp = t[:, perm] if t.dtype.kind == "f" else inv[t]
    wp = None if w is None else w[perm]
    a = getattr(fastloss, op)(z, t, weight=w, reduction="none", return_grad=True, backend=backend)
    b = getattr(fastloss, op)(z[:, perm], tp, weight=wp, reduction="none", return_grad=True, backend=backend)
    # summation order over classes changes: equal within rounding, not bitwise.
    # A gradient entry is formed from terms up to 2 max|w| in size (p A, a, or
    # 2 p w (p - t)); an entry that cancels to ~0 (all-tied weighted rows)
    # keeps rounding of that size, whatever the class order.
    terms = 2.0 * max(1.0, float(np.max(np.abs(w)))) if w is not None else 2.0
    assert_close(b[0], a[0], dtype, what="permuted loss")
    assert_close(b[1], a[1][:, perm], dtype, what="permuted grad", scale=terms)


@BACKEND
@pytest.mark.parametrize("op", ELEMENTWISE)
@SETTINGS
@given(case=elementwise_case(), seed=st.integers(0, 2**16))
def test_elementwise_permutation_equivariance(backend, op, case, seed):
    """Elementwise losses commute with any permutation of the elements."""
    z, y, w, dtype = case
    wf = None if w is None else np.broadcast_to(w, z.shape).ravel()
    perm = np.random.default_rng(seed).permutation(z.size)
    a = getattr(fastloss, op)(z.ravel(), y.ravel(), weight=wf, reduction="none", return_grad=True, backend=backend)
    b = getattr(fastloss, op)(z.ravel()[perm], y.ravel()[perm], weight=None if wf is None else wf[perm],
                              reduction="none", return_grad=True, backend=backend)
    np.testing.assert_array_equal(b[0], a[0][perm])
    np.testing.assert_array_equal(b[1], a[1][perm])
