"""C backend softmax_mse rows (fl_smse_row): the exp pass tagging the near
set N (z - m >= -ln2/2, storing E = expm1(z - m) there; float32 rows in float
arithmetic), the row sums over N and off it, the plain call (labels, no
weights: loss and V_F from those sums, no loss loop; the label's gradient
entry fixed after a t = 0 loop) and the loops specialised on weights /
probability targets.

Held to the reference with the tolerances of test_c_kernels.py, and to the
same bits in place, without a gradient and for any thread count.  The rows
are built from the cases the formulas single out: ties at the max with the
label among them or not, a lone max whose p rounds to 1 (label there or
not), all classes tied, +-inf, huge and masked logits, rows longer than one
1024-entry block of the row sums, and a class 1e-30 below the max (not tied).
"""
import numpy as np
import pytest

from fastloss import reference as ref

from .test_c_kernels import _softmax_scales, assert_close

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

OP = "softmax_mse"
DTYPES = (np.float32, np.float64)
TARGETS = ("labels", "weighted", "probs", "probs_weighted")


def _rows(C, dtype, seed, R=40):
    """Ordinary rows and the special cases, one per row."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((R, C)) * 4).astype(dtype)
    labels = rng.integers(0, C, R)
    a, b, k = 1, C // 2, C - 2  # some class indices
    z[0, [a, b, k]] = z[0].max() + 1  # ties at the max, the label among them
    labels[0] = b
    z[1, [a, b, k]] = z[1].max() + 1  # ... the label not among them
    labels[1] = 0
    z[2, [a, k]] = z[2].max() + 40  # two tied classes hold the mass, the label elsewhere
    labels[2] = b
    z[3, [a, k]] = z[3].max() + 40  # ... and the label one of them (U_T cancels)
    labels[3] = k
    z[4, :] = -60.0
    z[4, b] = 0.0  # a lone max whose p rounds to 1, the label elsewhere
    labels[4] = a
    z[5, :] = -60.0
    z[5, b] = 0.0  # ... the label there: d = -Q exactly
    labels[5] = b
    z[6, :] = -40.0
    z[6, b] = 0.0  # a lone max holding the mass (p not quite 1)
    labels[6] = k
    z[7, :] = 0.0  # every class tied
    labels[7] = a
    z[8, :] = np.finfo(dtype).max  # ties at the largest finite value
    z[8, 0] = -np.finfo(dtype).max
    labels[8] = 0
    z[9, b] = np.inf  # +inf max: the limit
    z[10, [a, k]] = np.inf  # two +inf entries share the mass
    labels[10] = k
    z[11, :] = -np.inf  # every class masked: 0
    z[12, ::2] = -np.inf  # masked classes, the label among them
    labels[12] = 0
    z[13, a] = np.nan
    labels[14] = -100  # ignored
    z[15] += dtype(1e6)  # large logits: z - m rounds
    z[16, :] = 1e30
    z[16, 0] = -1e30
    z[17, :] = np.linspace(-160, 0, C).astype(dtype)  # across float32's cut at z - m = -150
    labels[17] = 0
    z[18, :] = np.linspace(-1, 0, C).astype(dtype)  # spread mass: P2 small
    z[18, C - 1] = 0.0
    z[18, C - 2] = 0.0  # tied pair at the max, the label elsewhere
    labels[18] = 0
    z[19, :] = -1e-30  # nearly tied, e rounds to 1 off the max
    z[19, b] = 0.0
    labels[19] = a
    return z, labels


def _args(target, z, labels, rng):
    R, C = z.shape
    lab = None if target.startswith("probs") else labels
    pr = None
    if target.startswith("probs"):
        pr = rng.random((R, C))
        pr[:, ::3] = 0.0
        pr /= pr.sum(axis=1, keepdims=True)
        pr[0] = 0.0
        pr[0, C // 2] = 1.0  # one-hot in probabilities, on a tied class
        pr = pr.astype(z.dtype)
    w = None
    if target.endswith("weighted"):
        w = (rng.random(C) + 0.2).astype(z.dtype)
        w[C // 2] = 0.0  # a zero weight on a tied class masks it
    return lab, pr, w


def _run(z, lab, pr, w, scale, grad=True):
    R = z.shape[0]
    g = np.empty_like(z) if grad else None
    l = np.empty(R)
    with np.errstate(all="ignore"):
        c.softmax_rows(OP, z, lab, pr, w, -100, 0.0, g, l, scale)
    return g, l


def _check(z, lab, pr, w, scale):
    """Against the reference; in place and loss only give the same bits."""
    R = z.shape[0]
    dtype = z.dtype.type
    gr, lr = np.empty_like(z), np.empty(R)
    with np.errstate(all="ignore"):
        ref.softmax_rows(OP, z, lab, pr, w, -100, 0.0, gr, lr, scale)
    g, l = _run(z, lab, pr, w, scale)
    lsc, gsc = _softmax_scales(OP, z, lab, pr, w, 0.0, scale)
    assert_close(l, lr, lsc, dtype, "loss")
    assert_close(g, gr, gsc, dtype, "grad")
    zz = z.copy()  # in place: the gradient written over the logits
    l2 = np.empty(R)
    with np.errstate(all="ignore"):
        c.softmax_rows(OP, zz, lab, pr, w, -100, 0.0, zz, l2, scale)
    np.testing.assert_array_equal(zz, g)
    np.testing.assert_array_equal(l2, l)
    _, l3 = _run(z, lab, pr, w, scale, grad=False)  # loss only: the same losses
    np.testing.assert_array_equal(l3, l)
    return g, l


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [5, 16, 33, 100, 1000, 2500])
@pytest.mark.parametrize("target", TARGETS)
def test_rows_against_reference(target, C, dtype):
    z, labels = _rows(C, dtype, C)
    lab, pr, w = _args(target, z, labels, np.random.default_rng(C + 1))
    g, l = _check(z, lab, pr, w, 1.0 / z.shape[0])
    assert np.isnan(l[13]) and np.isnan(g[13]).all()
    assert l[11] == 0 and (g[11] == 0).all()
    if lab is not None:
        assert l[14] == 0 and (g[14] == 0).all()
    # the tied classes keep their (tiny, cancelling) gradients
    assert (g[2, [1, C - 2]] != 0).all() and (g[3, [1, C - 2]] != 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_rows_match_unit_weights(dtype):
    """The plain call's loss and V come from sums, not a loop: they must
    agree with the weighted loop at w = 1 (a different formula)."""
    z, labels = _rows(700, dtype, 3)
    ones = np.ones(700, dtype)
    g0, l0 = _run(z, labels, None, None, 0.5)
    g1, l1 = _run(z, labels, None, ones, 0.5)
    lsc, gsc = _softmax_scales(OP, z, labels, None, None, 0.0, 0.5)
    assert_close(l0, l1, lsc, dtype, "loss")
    assert_close(g0, g1, gsc, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_ties_and_dominant_classes(target, dtype):
    """Rows built only of the cancelling cases, over shifts, tie counts and labels."""
    rows, labs = [], []
    C = 70
    for gap in (0.0, 1e-3, 1.0, 20.0, 40.0, 60.0, 90.0, 120.0, 200.0):
        for ntied in (1, 2, 3, C - 1, C):
            for lab in (0, ntied - 1, ntied % C, C - 1):
                z = np.full(C, -gap)
                z[:ntied] = 0.0
                rows.append(np.roll(z, 5))
                labs.append((lab + 5) % C)
    z = np.array(rows).astype(dtype)
    lab, pr, w = _args(target, z, np.array(labs), np.random.default_rng(2))
    _check(z, lab, pr, w, 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("C", [9, 300])
def test_dominant_label_loss_keeps_its_digits(C, target, dtype):
    """Label on a lone max holding the mass: l = sum_{k != m} p_k^2 + Q^2
    (d_m = -Q, never 1 - p_max) is tiny; it must be right relative to
    itself, which the term-scaled tolerance above does not see.  C = 9
    plain: the short-row blocks."""
    gaps = np.array([8.0, 20.0, 40.0, 60.0, 80.0])
    z = np.zeros((gaps.size, C), dtype)
    z[:, 1:] = -gaps[:, None]
    labels = np.zeros(gaps.size, np.int64)
    lab, pr, w = _args(target, z, labels, np.random.default_rng(0))
    if pr is not None:
        pr[:] = 0.0
        pr[:, 0] = 1.0
    if w is not None:
        w[:] = 1.0
    _, l = _run(z, lab, pr, w, 1.0)
    e = np.exp(-gaps.astype(dtype).astype(np.float64))
    S = 1.0 + (C - 1) * e
    want = (C - 1) * (e / S) ** 2 + ((C - 1) * e / S) ** 2
    np.testing.assert_allclose(l, want, rtol=64 * float(np.finfo(dtype).eps), atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["labels", "probs"])
def test_long_rows(target, dtype):
    """Rows of many 1024-entry blocks (row sums added pairwise)."""
    rng = np.random.default_rng(8)
    C = 128256
    z = (rng.standard_normal((3, C)) * 2).astype(dtype)
    z[1, :] = -30.0
    z[1, 5000:5003] = 0.0  # three tied classes hold most of the mass
    labels = np.array([7, 5001, 99999])
    lab, pr, w = _args(target, z, labels, rng)
    _check(z, lab, pr, w, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_identical_for_any_thread_count(target, dtype, threads):
    C = 300
    zs, ls = _rows(C, dtype, 5)
    R = 4 * (65536 // C) + 7  # several rows per thread
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((R, C)) * 3).astype(dtype)
    labels = rng.integers(0, C, R)
    z[::20][:zs.shape[0]] = zs
    labels[::20][:zs.shape[0]] = ls
    lab, pr, w = _args(target, z, labels, rng)
    out = []
    for nt in (1, 2, 3):
        threads(nt)
        out.append(_run(z, lab, pr, w, 1.0))
    for g, l in out[1:]:
        np.testing.assert_array_equal(g, out[0][0])
        np.testing.assert_array_equal(l, out[0][1])


def test_float32_rows_track_float64():
    """float32 rows (float exp, e 2^100) against the float64 path, shifts across the cut."""
    shifts = -np.concatenate([np.linspace(0, 160, 2001), [149.99, 150.0, 150.01, 103.97, 87.33]])
    z = np.zeros((shifts.size, 40), np.float32)
    z[:, 1:] = shifts[:, None].astype(np.float32)
    z[::2, 3] = 0.0  # a tie with the max in every other row
    labels = np.arange(shifts.size) % 40
    g32, l32 = _check(z, labels, None, None, 1.0)
    g64, l64 = _check(z.astype(np.float64), labels, None, None, 1.0)
    lsc, gsc = _softmax_scales(OP, z.astype(np.float64), labels, None, None, 0.0, 1.0)
    assert_close(l32, l64, lsc, np.float32, "loss")
    assert_close(g32, g64, gsc, np.float32, "grad")
