"""C backend short-row path: plain calls (labels, no weights, no smoothing) of
both softmax ops on rows of C <= 32 classes run by blocks of 256 rows,
class-major; rows needing the general code (NaN, +-inf max, ignored label)
are redone per row.  Held to the reference with the tolerances of
test_c_kernels.py, and to the same bits in place, without a gradient and
for any thread count.
"""
import numpy as np
import pytest

from fastloss import reference as ref

from .test_c_kernels import _softmax_scales, assert_close

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

OPS = ref.SOFTMAX_OPS
DTYPES = (np.float32, np.float64)
RB = 256  # rows per block (FL_RB)


def _inputs(C, dtype, seed):
    """Several blocks and a ragged last one, with special rows."""
    rng = np.random.default_rng(seed)
    R = 3 * RB + 17
    z = (rng.standard_normal((R, C)) * 5).astype(dtype)
    labels = rng.integers(0, C, R)
    z[3, 2] = np.nan
    labels[4] = -100  # ignored
    z[5] = -np.inf  # every class masked
    z[6, 1] = np.inf  # +inf max: the limit
    z[7, 3] = -np.inf
    labels[7] = 3  # masked label: inf loss
    z[8, [1, 4]] = z[8].max() + 1  # tie: the first argmax, the label tied
    labels[8] = 4
    z[9] = 0.0  # a whole row tied
    z[10, 0] = 200.0  # dominant class, p_y -> 1
    labels[10] = 0
    z[11, 0] = 200.0  # dominant class, not the label
    labels[11] = 1
    z[12, [2, 5]] = z[12].max() + 40  # two tied classes hold the mass, the label elsewhere
    labels[12] = 0
    z[13, [2, 5]] = z[13].max() + 40  # ... and the label among them
    labels[13] = 5
    z[14, :] = -40.0
    z[14, 1] = 0.0  # a lone max holding the mass, the label elsewhere
    labels[14] = 3
    z[15, :] = np.finfo(dtype).max  # ties at the largest finite value
    z[15, 0] = -np.finfo(dtype).max
    z[16, 4] = np.nan
    labels[16] = -100  # NaN wins over ignore
    z[17] += dtype(1e6)  # large logits: z - m rounds
    z[RB - 1, 0] = np.nan  # block edges
    z[RB, 6] = np.inf
    labels[2 * RB - 1] = -100
    z[-1, :] = 0.0
    return z, labels


def _run(op, z, labels, scale, grad=True):
    R = z.shape[0]
    g = np.empty_like(z) if grad else None
    l = np.empty(R)
    with np.errstate(all="ignore"):
        c.softmax_rows(op, z, labels, None, None, -100, 0.0, g, l, scale)
    return g, l


def _check(op, z, labels, scale):
    """Against the reference; in place and loss only give the same bits."""
    R = z.shape[0]
    dtype = z.dtype.type
    gr, lr = np.empty_like(z), np.empty(R)
    with np.errstate(all="ignore"):
        ref.softmax_rows(op, z, labels, None, None, -100, 0.0, gr, lr, scale)
    g, l = _run(op, z, labels, scale)
    lsc, gsc = _softmax_scales(op, z, labels, None, None, 0.0, scale)
    assert_close(l, lr, lsc, dtype, f"{op} loss")
    assert_close(g, gr, gsc, dtype, f"{op} grad")
    zz = z.copy()  # in place: the gradient written over the logits
    l2 = np.empty(R)
    c.softmax_rows(op, zz, labels, None, None, -100, 0.0, zz, l2, scale)
    np.testing.assert_array_equal(zz, g)
    np.testing.assert_array_equal(l2, l)
    _, l3 = _run(op, z, labels, scale, grad=False)  # loss only: the same losses
    np.testing.assert_array_equal(l3, l)
    return g, l


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [7, 32])
@pytest.mark.parametrize("op", OPS)
def test_blocks_with_special_rows(op, C, dtype):
    z, labels = _inputs(C, dtype, C)
    g, l = _check(op, z, labels, 1.0 / z.shape[0])
    assert np.isnan(l[[3, 16, RB - 1]]).all() and np.isnan(g[[3, 16, RB - 1]]).all()
    assert (l[[4, 5, 2 * RB - 1]] == 0).all() and (g[[4, 5, 2 * RB - 1]] == 0).all()
    if op == "softmax_cross_entropy":
        assert l[7] == np.inf  # masked label


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_ties_and_dominant_classes(op, dtype):
    """Rows built only of the cancelling cases, over many shifts and C."""
    rows, labs = [], []
    C = 9
    for gap in (0.0, 1e-3, 1.0, 20.0, 40.0, 90.0, 120.0):
        for ntied in (1, 2, 3, C):
            for lab in (0, ntied - 1, C - 1):
                z = np.full(C, -gap)
                z[:ntied] = 0.0
                rows.append(np.roll(z, 2))
                labs.append((lab + 2) % C)
    z = np.array(rows).astype(dtype)
    _check(op, z, np.array(labs), 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 2, 3, 16, 31])
@pytest.mark.parametrize("op", OPS)
def test_shapes(op, C, dtype):
    for R in (1, RB - 1, RB, RB + 1):
        rng = np.random.default_rng(R + C)
        z = (rng.standard_normal((R, C)) * 3).astype(dtype)
        _check(op, z, rng.integers(0, C, R), 1.0)


@pytest.mark.parametrize("op", OPS)
def test_float32_exp_cut(op):
    """float32 e 2^100: the -150 cut, z - m rounding in float, tiny p."""
    shifts = -np.concatenate([np.linspace(0, 160, 801), [149.99, 150.0, 150.01, 103.97, 87.33]])
    z = np.zeros((shifts.size, 5), np.float32)
    z[:, 1:] = shifts[:, None].astype(np.float32)
    z[::3, 2] = np.float32(-49.99)
    z[1::3] += np.float32(1e4)
    labels = np.arange(shifts.size) % 5
    _check(op, z, labels, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_same_bits_for_any_thread_count(op, dtype, threads):
    rng = np.random.default_rng(4)
    R = 40 * RB + 5  # several blocks per thread
    z = (rng.standard_normal((R, 10)) * 5).astype(dtype)
    labels = rng.integers(0, 10, R)
    zs, ls = _inputs(10, dtype, 1)
    z[:zs.shape[0]] = zs
    labels[:zs.shape[0]] = ls
    out = []
    for nt in (1, 2, 3):
        threads(nt)
        out.append(_run(op, z, labels, 1.0))
    for g, l in out[1:]:
        np.testing.assert_array_equal(g, out[0][0])
        np.testing.assert_array_equal(l, out[0][1])


def _tail_inputs(R, C, dtype, seed):
    """Special rows in the last rows and the last class: the block
    transposes go by tiles of 8 or 4 rows and classes, whose last tile
    overlaps the one before (or a scalar copy when the block is thinner)."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((R, C)) * 4).astype(dtype)
    labels = rng.integers(0, C, R)
    z[R - 1, C - 1] = np.nan
    if R >= 3:
        labels[R - 2] = -100
        z[R - 3, C - 1] = np.inf
    if R >= 5:
        z[R - 4, C - 1] = z[R - 4].max() + 50  # the last class dominant, the label
        labels[R - 4] = C - 1
        z[R - 5] = -np.inf
    if R >= 8:
        z[R - 7, :] = z[R - 7, 0]  # a whole row tied
    return z, labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_every_row_length_and_ragged_rows(op, dtype):
    """C = 1..32 with row counts off the tile sizes, in place and loss only
    the same bits (_check), special rows in the overlapped tails."""
    for C in range(1, 33):
        for R in (3, 13, RB + 21):
            z, labels = _tail_inputs(R, C, dtype, 100 * C + R)
            g, l = _check(op, z, labels, 0.5)
            assert np.isnan(l[R - 1]) and np.isnan(g[R - 1]).all()
            assert l[R - 2] == 0 and (g[R - 2] == 0).all()
