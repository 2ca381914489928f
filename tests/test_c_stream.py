"""Streaming (non-temporal) gradient stores of the C kernels: the same bits as plain stores.

Large gradients are written with streaming stores (csrc/fl_stream.h), above
a size threshold that the internal hook ``fl_set_stream_min_bytes`` moves:
0 forces the streaming path on every call, INT64_MAX turns it off.  Only
mse streams today (the other ops measured no faster, csrc/README.md); every
op is checked so that a later streaming path is covered.  Every
op x dtype x output layout (fresh, out= at every alignment class, a view
one element in, one byte in, in place) x odd sizes must give bit-identical
loss and gradient both ways, and match the float64 reference.  Sizes cover
the writer's cases: shorter than a line, partial lines at both ends, rows
that start inside lines, several threads (ranges meeting inside a line),
NaN/ignored rows (filled, not computed) between computed rows.
"""
import contextlib

import numpy as np
import pytest

import fastloss
from fastloss.registry import LOSSES
from tests.tolerances import assert_close, assert_reduced

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

DTYPES = (np.float32, np.float64)
ELEMENTWISE = ("mse", "sigmoid_mse", "sigmoid_bce")
SOFTMAX = ("softmax_cross_entropy", "softmax_mse")
EW_SIZES = (1, 7, 1000, 4099, 140001)  # 140001: 3 threads' ranges (conftest's threads fixture)
SM_SHAPES = ((1, 1), (2, 7), (300, 20), (7, 33), (33, 1000), (3, 4097), (130, 1531))
#: out= layouts: None, or the byte offset of the buffer from a 64-byte line
#: ("elem": np.empty(n + 1)[1:], one element in; "byte": not even element-aligned)
LAYOUTS = ("fresh", "line", "elem", "16", "byte", "inplace")
INT64_MAX = 2**63 - 1


@contextlib.contextmanager
def stream_min_bytes(n):
    c.lib.fl_set_stream_min_bytes(n)
    try:
        yield
    finally:
        c.lib.fl_set_stream_min_bytes(-1)  # the default


def test_hook_restores_default():
    default = c.lib.fl_get_stream_min_bytes()
    assert default > 0
    if default == INT64_MAX:
        pytest.skip("no streaming stores on this target (not x86-64): the hook is a no-op")
    assert c.lib.fl_set_stream_min_bytes(0) == default
    assert c.lib.fl_get_stream_min_bytes() == 0
    assert c.lib.fl_set_stream_min_bytes(-1) == 0
    assert c.lib.fl_get_stream_min_bytes() == default


def buffer(shape, dtype, offset):
    """A C-contiguous array whose data starts ``offset`` bytes past a 64-byte line."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(nbytes + 128, np.uint8)
    start = (offset - raw.ctypes.data) % 64
    a = raw[start:start + nbytes].view(dt).reshape(shape)
    assert a.ctypes.data % 64 == offset
    return a


def out_for(layout, z):
    if layout == "fresh":
        return None
    if layout == "inplace":
        return z
    if layout == "elem":
        return np.empty(z.size + 1, z.dtype)[1:].reshape(z.shape)
    return buffer(z.shape, z.dtype, {"line": 0, "16": 16, "byte": 1}[layout])


def logits_for(layout, z):
    """The logits to pass: for in place, a copy at an offset inside a line."""
    if layout != "inplace":
        return z
    zz = buffer(z.shape, z.dtype, 3 * z.dtype.itemsize)
    zz[...] = z
    return zz


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def run_both(op, z, t, layout, **kw):
    """(loss, grad) with streaming off, then forced on; the same bits both ways."""
    res = []
    for n in (INT64_MAX, 0):
        zz = logits_for(layout, z)
        out = out_for(layout, zz)
        if out is not None and out is not zz:
            out[...] = np.nan  # stale contents must not survive
        with stream_min_bytes(n), np.errstate(all="ignore"):
            loss, grad = getattr(fastloss, op)(zz, t, backend="c", return_grad=True, out=out, **kw)
        if out is not None:
            assert grad is out
        res.append((np.array(loss), np.array(grad)))
    (l0, g0), (l1, g1) = res
    what = f"{op} {z.dtype} {z.shape} {layout} {sorted(kw)}"
    assert np.array_equal(bits(l0), bits(l1)), f"{what}: loss bits differ with streaming stores"
    diff = np.flatnonzero(bits(g0).ravel() != bits(g1).ravel())
    assert diff.size == 0, (f"{what}: {diff.size} gradient entries differ with streaming stores, first at "
                            f"{diff[:5]}: {g0.ravel()[diff[:5]]} vs {g1.ravel()[diff[:5]]}")
    return l1, g1


def reference(op, z, t, **kw):
    kw = {k: (np.asarray(v, np.float64) if k in ("weight", "pos_weight") else v) for k, v in kw.items()}
    t64 = np.asarray(t, np.float64) if np.asarray(t).dtype.kind == "f" else t
    with np.errstate(all="ignore"):
        return getattr(fastloss, op)(np.asarray(z, np.float64), t64, backend="numpy", return_grad=True, **kw)


def check(op, z, t, layout, dtype, **kw):
    loss, grad = run_both(op, z, t, layout, **kw)
    eloss, egrad = reference(op, z, t, **kw)
    what = f"c stream {op} {np.dtype(dtype)} {z.shape} {layout} {sorted(kw)}"
    if kw.get("reduction") == "none":
        assert_close(loss, eloss, dtype, what=what + " loss")
    else:
        assert_reduced(loss, eloss, dtype, what=what + " loss")
    assert_close(grad, egrad, dtype, what=what + " grad")


def inputs(op, shape, dtype, seed, probs=False):
    z, t = LOSSES[op].make_inputs(shape, np.float64, rng=np.random.default_rng(seed), probs=probs)
    return z.astype(dtype), (t.astype(dtype) if t.dtype.kind == "f" else t)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", EW_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_stream_bits(op, dtype, n, layout, threads):
    threads(3)
    z, t = inputs(op, (n,), dtype, seed=n)
    check(op, z, t, layout, dtype)                      # the plain loop (mse) / the general loop
    check(op, z, t, layout, dtype, reduction="none")    # per-element losses: the general loop
    w = np.random.default_rng(1).random(n).astype(dtype)
    check(op, z, t, layout, dtype, weight=w)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", SOFTMAX)
def test_softmax_stream_bits(op, dtype, shape, layout, threads):
    threads(3)
    R, C = shape
    z, lab = inputs(op, shape, dtype, seed=R * C)
    check(op, z, lab, layout, dtype)                    # plain rows (short rows: the class-major blocks)
    w = np.random.default_rng(2).random(C).astype(dtype) + 0.5
    check(op, z, lab, layout, dtype, weight=w)
    _, probs = inputs(op, shape, dtype, seed=R * C + 1, probs=True)
    check(op, z, probs, layout, dtype)
    if op == "softmax_cross_entropy":
        check(op, z, lab, layout, dtype, label_smoothing=0.1)
    # rows filled instead of computed (ignored, NaN) between computed ones
    lab2 = lab.copy()
    lab2[::3] = -100
    z2 = z.copy()
    z2[1::4, C // 2] = np.nan
    run_both(op, z2, lab2, layout, reduction="none")
