"""C backend fast paths: float32 cross-entropy rows and short-row blocks.

Plain cross-entropy (labels, no weights, no smoothing) on rows of C <= 32
classes goes through blocks of 256 rows processed class-major, with special
rows (NaN, +-inf max, ignored label) redone by the general row code; float32
cross-entropy rows with labels and no smoothing take a float32 exp.  These
tests hold both to the reference (the tolerances of test_c_kernels.py), and
check the same bits in place, without a gradient and for any thread count.
"""
import numpy as np
import pytest

from fastloss import reference as ref

from .test_c_kernels import _softmax_scales, assert_close

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

CE = "softmax_cross_entropy"
DTYPES = (np.float32, np.float64)


def _special_rows(z, labels, dtype, every=97):
    """Sprinkle rows needing the general code (and some that do not) over z."""
    R, C = z.shape
    big = np.finfo(dtype).max
    for j, r in enumerate(range(3, R, every)):
        kind = j % 11
        k = (r * 7) % C
        if kind == 0:
            z[r, k] = np.nan
        elif kind == 1:
            z[r, k] = np.inf  # +inf max: the limit
        elif kind == 2:
            z[r, :] = -np.inf  # every class masked: loss 0
        elif kind == 3:
            labels[r] = -100  # ignored
        elif kind == 4:
            z[r, ::2] = -np.inf  # masked classes, the label maybe among them
            labels[r] = 0
        elif kind == 5:
            z[r, :] = big  # ties at the largest finite value
            z[r, 0] = -big
        elif kind == 6:
            z[r, k] = 80.0  # p -> 1 (the argmax is the label or not)
            labels[r] = k if j % 2 else (k + 1) % C
        elif kind == 7:
            z[r, :] = 0.0  # all tied: first argmax
        elif kind == 8:
            z[r, :] += dtype(1e6)
        elif kind == 9:
            z[r, k] = np.nan
            labels[r] = -100  # NaN wins over ignore
        else:
            z[r, :] = -np.inf
            z[r, k] = np.inf


def _check(z, labels, w=None, scale=0.125, dtype=None):
    dtype = dtype or z.dtype.type
    R, C = z.shape
    out = {}
    for mod in (ref, c):
        g, l = np.empty_like(z), np.empty(R)
        with np.errstate(all="ignore"):
            mod.softmax_rows(CE, z, labels, None, w, -100, 0.0, g, l, scale)
        out[mod.NAME] = g, l
    lsc, gsc = _softmax_scales(CE, z, labels, None, w, 0.0, scale)
    assert_close(out["c"][1], out["numpy"][1], lsc, dtype, "loss")
    assert_close(out["c"][0], out["numpy"][0], gsc, dtype, "grad")
    zz = z.copy()  # in place: the same bits
    l2 = np.empty(R)
    c.softmax_rows(CE, zz, labels, None, w, -100, 0.0, zz, l2, scale)
    np.testing.assert_array_equal(zz, out["c"][0])
    np.testing.assert_array_equal(l2, out["c"][1])
    l3 = np.empty(R)  # loss only: the same losses
    c.softmax_rows(CE, z, labels, None, w, -100, 0.0, None, l3, scale)
    np.testing.assert_array_equal(l3, out["c"][1])
    return out["c"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 2, 3, 10, 17, 32, 33])
def test_short_rows_many_blocks_with_special_rows(C, dtype):
    rng = np.random.default_rng(C)
    R = 3 * 256 + 41  # several blocks and a ragged last one
    z = (rng.standard_normal((R, C)) * 4).astype(dtype)
    labels = rng.integers(0, C, R)
    if C > 1:
        _special_rows(z, labels, dtype)
    _check(z, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_rows_all_special_and_single_rows(dtype):
    z = np.full((300, 5), np.nan, dtype)
    labels = np.zeros(300, np.int64)
    g, l = _check(z, labels)
    assert np.isnan(g).all() and np.isnan(l).all()
    for R in (1, 255, 256, 257):
        rng = np.random.default_rng(R)
        _check((rng.standard_normal((R, 4)) * 3).astype(dtype), rng.integers(0, 4, R))


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_rows_weights_and_smoothing_take_the_general_path(dtype):
    """Not plain: same answers as the reference, same bits in place."""
    rng = np.random.default_rng(9)
    z = (rng.standard_normal((600, 8)) * 4).astype(dtype)
    labels = rng.integers(0, 8, 600)
    _special_rows(z, labels, dtype, every=13)
    w = (rng.random(8) + 0.2).astype(dtype)
    w[3] = 0
    _check(z, labels, w=w)


@pytest.mark.parametrize("C", [10, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_for_any_thread_count(C, dtype, threads):
    rng = np.random.default_rng(4)
    R = 70000 // C * 4 + 3  # several blocks per thread
    z = (rng.standard_normal((R, C)) * 5).astype(dtype)
    labels = rng.integers(0, C, R)
    _special_rows(z, labels, dtype)
    out = []
    for nt in (1, 2, 3):
        threads(nt)
        g, l = np.empty_like(z), np.empty(R)
        with np.errstate(all="ignore"):
            c.softmax_rows(CE, z, labels, None, None, -100, 0.0, g, l, 1.0)
        out.append((g, l))
    for g, l in out[1:]:
        np.testing.assert_array_equal(g, out[0][0])
        np.testing.assert_array_equal(l, out[0][1])


@pytest.mark.parametrize("C", [40, 1000, 5000])
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_rows_extremes(C, weighted):
    """float32 exp of z - m: the -150 cut, inexact float differences, tiny p, huge values."""
    rng = np.random.default_rng(C + weighted)
    R = 64
    z = (rng.standard_normal((R, C)) * 3).astype(np.float32)
    labels = rng.integers(0, C, R)
    z[0, :] = np.linspace(-160, 0, C, dtype=np.float32)  # across the 0 cut at z - m = -150
    labels[0] = 1
    z[1, :] = np.linspace(-50, 100, C, dtype=np.float32)  # z - m rounds in float: exact via TwoSum
    z[1, 3] = np.float32(-49.99)
    labels[1] = 3
    z[2, :] = np.float32(3e38)
    z[2, 1:: 2] = np.float32(-3e38)  # z - m overflows float: e = 0
    z[3, :] = -np.float32(1e-40)  # subnormal logits, all nearly tied
    z[4, :] = np.float32(-104.0)
    z[4, 5] = np.float32(0.0)  # p ~ 7e-46 elsewhere: float subnormal gradient
    labels[4] = 7
    z[5, :] = np.float32(20.0)
    z[5, 0] = np.float32(-110.0)
    labels[5] = 0  # the label's p is tiny: g_y = (p - 1) scale
    z[6, :] = np.float32(88.0)
    z[6, 9] = np.float32(88.0001)
    labels[6] = 9
    z[7, :] = np.float32(-3e38)
    labels[7] = 2
    labels[8] = -100
    z[9, 4] = np.inf
    z[10, 6] = np.nan
    z[11, :] = -np.inf
    z[12, 2] = np.float32(1e4)
    labels[12] = 2
    w = None
    if weighted:
        w = (rng.random(C) + 0.3).astype(np.float32)
        w[1] = 0
        w[2] = np.float32(1e30)
    _check(z, labels, w=w, scale=1.0 / R)


def test_float32_exp_near_cut_matches_float64_path():
    """Every class at one shift z - m from the max, across [-160, 0]: p against float64."""
    shifts = -np.concatenate([np.linspace(0, 160, 4001), [149.99, 150.0, 150.01, 103.97, 87.33]])
    z = np.zeros((shifts.size, 34), np.float32)
    z[:, 1:] = shifts[:, None].astype(np.float32)
    labels = np.zeros(shifts.size, np.int64)
    g32, _ = _check(z, labels, scale=1.0)
    g64, _ = _check(z.astype(np.float64), labels, scale=1.0)
    want = g64.astype(np.float32)
    tiny = np.abs(g64) < np.finfo(np.float32).tiny
    ulp = np.spacing(np.abs(want)).astype(np.float64)
    err = np.abs(g32.astype(np.float64) - g64) / np.where(tiny, np.finfo(np.float32).smallest_subnormal, ulp)
    assert float(err.max()) <= 2, (float(err.max()), shifts[np.argmax(err.max(axis=1))])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ref.ELEMENTWISE_OPS)
def test_elementwise_plain_call_same_bits(op, dtype):
    """Gradient only, no weights (the plain loop): in place or not, same bits and sum as the general loop."""
    rng = np.random.default_rng(6)
    n = 5 * 1024 + 333
    z = (rng.standard_normal(n) * 30).astype(dtype)
    z[:6] = [np.inf, -np.inf, np.nan, np.finfo(dtype).max, -np.finfo(dtype).max, 0.0]
    y = rng.random(n).astype(dtype)
    g, l = np.empty_like(z), np.empty_like(z)
    with np.errstate(all="ignore"):
        s_gen = c.elementwise(op, z, y, None, None, g, l, 0.25)  # per-element losses: the general loop
        g_out = np.empty_like(z)
        s_out = c.elementwise(op, z, y, None, None, g_out, None, 0.25)
        zz = z.copy()
        s_in = c.elementwise(op, zz, y, None, None, zz, None, 0.25)
    np.testing.assert_array_equal(g_out, g)
    np.testing.assert_array_equal(zz, g)
    assert s_gen == s_out == s_in or (np.isnan(s_gen) and np.isnan(s_out) and np.isnan(s_in))
