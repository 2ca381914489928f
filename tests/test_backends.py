"""Every host backend x op x dtype x reduction x option against the reference.

The expectation is always the NumPy reference run in float64 on a canonical
(C-contiguous, class axis last) copy of the same input values, so layout,
dtype and option handling are tested for the "numpy" backend too.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss.registry import LOSSES
from tests.conftest import ALL_OPS, ELEMENTWISE, SOFTMAX
from tests.tolerances import assert_close, assert_reduced

DTYPES = [np.float16, np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]
SHAPE = (3, 7, 13)  # odd sizes on purpose: no vector width divides them


def make(op, shape=SHAPE, dtype=np.float64, *, probs=False, seed=0):
    z, t = LOSSES[op].make_inputs(shape, np.float64, rng=np.random.default_rng(seed), probs=probs)
    z = z.astype(dtype)
    return z, (t.astype(dtype) if t.dtype.kind == "f" else t)


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64)


def reference(op, z, t, **kw):
    """The float64 reference on C-contiguous copies of the same values."""
    kw = dict(kw)
    for k in ("weight", "pos_weight"):
        if k in kw:
            kw[k] = _f64(kw[k])
    t64 = _f64(t) if np.asarray(t).dtype.kind == "f" else np.array(t)
    kw.pop("out", None)
    return getattr(fastloss, op)(_f64(z), t64, return_grad=True, backend="numpy", **kw)


def check(op, backend, z, t, dtype, **kw):
    """Run ``op`` on ``backend`` and compare loss and gradient with the reference."""
    loss, grad = getattr(fastloss, op)(z, t, return_grad=True, backend=backend, **kw)
    eloss, egrad = reference(op, z, t, **kw)
    red = kw.get("reduction", "mean")
    what = f"{backend} {op} {np.dtype(dtype)} {sorted(kw)}"
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == np.shape(z)
    if red == "none":
        assert_close(loss, eloss, dtype, what=what + " loss")
    else:
        assert np.ndim(loss) == 0
        assert_reduced(loss, eloss, dtype, what=what + " loss")
    assert_close(grad, egrad, dtype, what=what + " grad")
    return loss, grad


ELEMENTWISE_OPTIONS = {
    "plain": lambda z: {},
    "weight_full": lambda z: {"weight": np.linspace(0.0, 2.0, z.size).reshape(z.shape)},
    "weight_class": lambda z: {"weight": np.linspace(0.5, 1.5, z.shape[-1])},
    "weight_scalar": lambda z: {"weight": 0.75},
    "weight_rows": lambda z: {"weight": np.linspace(0.0, 3.0, z.shape[-2])[:, None]},  # (7, 1) broadcast
    "pos_weight_class": lambda z: {"pos_weight": np.linspace(0.5, 4.0, z.shape[-1])},
    "pos_weight_and_weight": lambda z: {"pos_weight": np.full(z.shape, 2.5),
                                        "weight": np.linspace(1.0, 2.0, z.shape[-1])},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,option", [(op, opt) for op in ELEMENTWISE for opt in ELEMENTWISE_OPTIONS
                                       if op == "sigmoid_bce" or not opt.startswith("pos_weight")])
def test_elementwise_matches_reference(backend, op, dtype, reduction, option):
    z, t = make(op, dtype=dtype)
    kw = {k: (np.asarray(v).astype(dtype)) for k, v in ELEMENTWISE_OPTIONS[option](z).items()}
    check(op, backend, z, t, dtype, reduction=reduction, **kw)


SOFTMAX_OPTIONS = {
    "labels": dict(),
    "probs": dict(probs=True),
    "weight": dict(weight=True),
    "ignore": dict(ignore=True),
    "probs_weight": dict(probs=True, weight=True),
    "smooth": dict(label_smoothing=0.2),
    "smooth_ignore_weight": dict(label_smoothing=0.1, ignore=True, weight=True),
    "probs_smooth": dict(probs=True, label_smoothing=0.3),
    "ignore_custom_index": dict(ignore=True, ignore_index=3),
}


def softmax_case(op, option, dtype, shape=SHAPE, seed=0):
    spec = dict(SOFTMAX_OPTIONS[option])
    z, t = make(op, shape, dtype, probs=spec.get("probs", False), seed=seed)
    kw = {}
    if spec.get("weight"):
        kw["weight"] = np.linspace(0.25, 2.0, shape[-1]).astype(dtype)
    if spec.get("ignore"):
        idx = spec.get("ignore_index", -100)
        t = t.copy()
        t.reshape(-1)[::4] = idx
        if idx != -100:
            kw["ignore_index"] = idx
    if "label_smoothing" in spec:
        kw["label_smoothing"] = spec["label_smoothing"]
    return z, t, kw


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,option", [(op, opt) for op in SOFTMAX for opt in SOFTMAX_OPTIONS
                                       if op == "softmax_cross_entropy" or "smooth" not in opt])
def test_softmax_matches_reference(backend, op, dtype, reduction, option):
    z, t, kw = softmax_case(op, option, dtype)
    check(op, backend, z, t, dtype, reduction=reduction, **kw)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
@pytest.mark.parametrize("op", SOFTMAX)
def test_axis_equals_moveaxis(backend, op, axis):
    z, t, kw = softmax_case(op, "weight", np.float32)  # class axis last, C = 13
    zc = np.ascontiguousarray(np.moveaxis(z, -1, axis))  # class axis now at `axis`
    for probs in (False, True):
        tt = make(op, SHAPE, np.float32, probs=True)[1] if probs else t
        ta = np.ascontiguousarray(np.moveaxis(tt, -1, axis)) if probs else tt
        for red in REDUCTIONS:
            loss, grad = getattr(fastloss, op)(zc, ta, axis=axis, reduction=red, return_grad=True,
                                               backend=backend, **kw)
            eloss, egrad = getattr(fastloss, op)(z, tt, axis=-1, reduction=red, return_grad=True,
                                                 backend=backend, **kw)
            assert grad.shape == zc.shape
            # the same values in another memory order: the result must not change
            np.testing.assert_array_equal(np.moveaxis(grad, axis, -1), egrad)
            np.testing.assert_array_equal(loss, eloss)


def _layouts(z):
    """(name, array with z's values in another layout) pairs."""
    big = np.zeros((z.shape[0] * 2,) + tuple(s * 2 for s in z.shape[1:]), dtype=z.dtype)
    strided = big[::2, ::2, ::2] if z.ndim == 3 else big[::2, ::2]
    strided[...] = z
    return [("strided", strided), ("fortran", np.asfortranarray(z)), ("reversed", np.ascontiguousarray(z[::-1])[::-1])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ALL_OPS)
def test_layouts_match_contiguous(backend, op, dtype):
    z, t = make(op, dtype=dtype, probs=True)
    base_loss, base_grad = getattr(fastloss, op)(z, t, reduction="none", return_grad=True, backend=backend)
    for name, zl in _layouts(z):
        for tname, tl in [("contig", t)] + (_layouts(t) if t.dtype.kind == "f" else []):
            loss, grad = getattr(fastloss, op)(zl, tl, reduction="none", return_grad=True, backend=backend)
            assert grad.shape == z.shape, (name, tname)
            np.testing.assert_array_equal(loss, base_loss, err_msg=f"{name}/{tname}")
            np.testing.assert_array_equal(grad, base_grad, err_msg=f"{name}/{tname}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ALL_OPS)
def test_out_variants(backend, op, dtype):
    z, t = make(op, dtype=dtype)
    loss0, grad0 = getattr(fastloss, op)(z, t, return_grad=True, backend=backend)
    # contiguous out
    out = np.full(z.shape, 7.0, dtype=dtype)
    loss, res = getattr(fastloss, op)(z, t, return_grad=True, out=out, backend=backend)
    assert res is out and loss == loss0
    np.testing.assert_array_equal(out, grad0)
    # non-contiguous out: a strided view, the parent's other entries untouched
    parent = np.full((z.shape[0], z.shape[1], z.shape[2] * 2), 7.0, dtype=dtype)
    view = parent[..., ::2]
    loss, res = getattr(fastloss, op)(z, t, return_grad=True, out=view, backend=backend)
    assert res is view
    np.testing.assert_array_equal(view, grad0)
    assert (parent[..., 1::2] == 7.0).all()
    # Fortran-ordered out
    fout = np.asfortranarray(np.full(z.shape, 7.0, dtype=dtype))
    getattr(fastloss, op)(z, t, return_grad=True, out=fout, backend=backend)
    np.testing.assert_array_equal(fout, grad0)
    # in place: out is the logits.  A kernel may take another path when grad
    # aliases z (grad as scratch), so equal within rounding, not bitwise.
    zi = z.copy()
    loss, res = getattr(fastloss, op)(zi, t, return_grad=True, out=zi, backend=backend)
    assert res is zi
    assert_reduced(loss, loss0, dtype, what="in-place loss")
    assert_close(zi, grad0, dtype, what="in-place grad")
    # in place on a non-contiguous logits view
    zp = np.zeros_like(parent)
    zv = zp[..., ::2]
    zv[...] = z
    getattr(fastloss, op)(zv, t, return_grad=True, out=zv, backend=backend)
    assert_close(zv, grad0, dtype, what="in-place strided grad")
    assert (zp[..., 1::2] == 0).all()


@pytest.mark.parametrize("op", ALL_OPS)
def test_inputs_never_modified(backend, op):
    z, t = make(op, dtype=np.float32, probs=True)
    w = np.linspace(0.5, 1.5, z.shape[-1]).astype(np.float32)
    kw = {"weight": w}
    if op == "sigmoid_bce":
        kw["pos_weight"] = w.copy()
    copies = [a.copy() for a in (z, t, *kw.values())]
    for arr in (z, t, *kw.values()):
        arr.flags.writeable = False  # a write attempt would raise
    for red in REDUCTIONS:
        getattr(fastloss, op)(z, t, reduction=red, return_grad=True, backend=backend, **kw)
        getattr(fastloss, op)(z, t, reduction=red, backend=backend, **kw)
    for arr, ref in zip((z, t, *kw.values()), copies):
        np.testing.assert_array_equal(arr, ref)
        assert not arr.flags.writeable
    # and writeable inputs are left alone too
    z2, t2 = z.copy(), t.copy()
    getattr(fastloss, op)(z2, t2, return_grad=True, backend=backend)
    np.testing.assert_array_equal(z2, copies[0])
    np.testing.assert_array_equal(t2, copies[1])


@pytest.mark.parametrize("shape", [(0,), (0, 5), (4, 0), (2, 0, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ALL_OPS)
def test_empty(backend, op, dtype, shape):
    if op in SOFTMAX and shape == (0,):
        shape = (0, 3)
    z = np.zeros(shape, dtype=dtype)
    # with zero classes the only valid label is ignore_index
    fill = -100 if shape[-1] == 0 else 0
    t = np.full(shape[:-1], fill, dtype=np.int64) if op in SOFTMAX else np.zeros(shape, dtype=dtype)
    for red in ("mean", "sum"):
        loss, grad = getattr(fastloss, op)(z, t, reduction=red, return_grad=True, backend=backend)
        assert loss == 0.0 and not np.isnan(loss) and np.asarray(loss).dtype == dtype
        assert grad.shape == shape and grad.dtype == dtype
    loss = getattr(fastloss, op)(z, t, reduction="none", backend=backend)
    assert loss.shape == (shape if op in ELEMENTWISE else shape[:-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_zero_dim_elementwise(backend, op, dtype):
    z, t = np.asarray(1.5, dtype=dtype), np.asarray(0.25, dtype=dtype)
    for red in REDUCTIONS:
        loss, grad = getattr(fastloss, op)(z, t, reduction=red, return_grad=True, backend=backend)
        eloss, egrad = reference(op, z[None], t[None], reduction=red)
        assert np.ndim(loss) == 0 and grad.shape == () and grad.dtype == dtype
        assert_close(np.float64(loss), np.float64(eloss if red != "none" else eloss[0]), dtype, what=red)
        assert_close(grad, egrad[0], dtype, what=red)


@pytest.mark.parametrize("label_dtype", [np.int32, np.uint8, np.int64, np.int16, np.uint64])
@pytest.mark.parametrize("op", SOFTMAX)
def test_label_dtypes(backend, op, label_dtype):
    z, t = make(op, dtype=np.float64)
    expect = getattr(fastloss, op)(z, t, reduction="none", return_grad=True, backend=backend)
    got = getattr(fastloss, op)(z, t.astype(label_dtype), reduction="none", return_grad=True, backend=backend)
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_array_equal(got[1], expect[1])


@pytest.mark.parametrize("op", SOFTMAX)
def test_mean_over_all_ignored_is_zero(backend, op):
    z, _ = make(op, (4, 5))
    t = np.full(4, -100)
    kw = {"label_smoothing": 0.2} if op == "softmax_cross_entropy" else {}
    for weight in (None, np.ones(5)):
        loss, grad = getattr(fastloss, op)(z, t, weight=weight, return_grad=True, backend=backend, **kw)
        assert loss == 0.0 and not np.isnan(loss)
        assert (grad == 0).all()


@pytest.mark.parametrize("op", SOFTMAX)
def test_one_dim_logits_single_row(backend, op):
    z, t = make(op, (1, 6), seed=3)
    loss1, grad1 = getattr(fastloss, op)(z[0], t[0], reduction="none", return_grad=True, backend=backend)
    loss2, grad2 = getattr(fastloss, op)(z, t, reduction="none", return_grad=True, backend=backend)
    assert np.ndim(loss1) == 0 and grad1.shape == (6,)
    assert loss1 == loss2[0]
    np.testing.assert_array_equal(grad1, grad2[0])


@pytest.mark.parametrize("op", ALL_OPS)
def test_return_grad_false_gives_same_loss(backend, op):
    z, t = make(op, dtype=np.float32)
    for red in REDUCTIONS:  # a loss-only kernel path may round differently
        a = getattr(fastloss, op)(z, t, reduction=red, backend=backend)
        b, _ = getattr(fastloss, op)(z, t, reduction=red, return_grad=True, backend=backend)
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b)
        if red == "none":
            assert_close(a, b, np.float32, what="loss without grad")
        else:
            assert_reduced(a, b, np.float32, what="loss without grad")


@pytest.mark.parametrize("op", ALL_OPS)
def test_large_rows_and_lengths(backend, op):
    """Sizes past any block/unroll width: 1 x 4099 classes, 10007 elements."""
    shape = (2, 4099) if op in SOFTMAX else (10007,)
    z, t = make(op, shape, np.float32, seed=5)
    check(op, backend, z, t, np.float32, reduction="mean")
    check(op, backend, z, t, np.float32, reduction="none")


@pytest.mark.parametrize("name", ["numba", "c"])
@pytest.mark.parametrize("op", SOFTMAX)
@pytest.mark.parametrize("C", [7, 300])  # the short-row block path and the row path
def test_kernel_label_out_of_range_gives_nan_row(name, op, C):
    """The public functions reject such labels first; called directly, a
    compiled kernel gives that row NaN (never an access out of bounds) and
    leaves the other rows as they would be."""
    try:
        mod = fastloss._backends.load(name)
    except fastloss.BackendUnavailable:
        pytest.skip(f"{name} not available")
    rng = np.random.default_rng(C)
    R = 300
    z = rng.standard_normal((R, C)).astype(np.float32)
    labels = rng.integers(0, C, R)
    g0, l0 = np.empty_like(z), np.empty(R)
    mod.softmax_rows(op, z, labels, None, None, -100, 0.0, g0, l0, 1.0)
    bad = labels.copy()
    bad[[3, 200]] = [C, -5]
    bad[7] = -100  # ignore_index stays an ignored row
    g, l = np.empty_like(z), np.empty(R)
    total = mod.softmax_rows(op, z, bad, None, None, -100, 0.0, g, l, 1.0)
    assert np.isnan(l[[3, 200]]).all() and np.isnan(g[[3, 200]]).all() and np.isnan(total)
    assert l[7] == 0.0 and (g[7] == 0.0).all()
    keep = np.setdiff1d(np.arange(R), [3, 7, 200])
    np.testing.assert_array_equal(l[keep], l0[keep])
    np.testing.assert_array_equal(g[keep], g0[keep])
