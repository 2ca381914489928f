"""C kernels against fastloss.reference: every op x dtype x option, ordinary and extreme inputs.

The C code uses its own exp/log1p, so results may differ from NumPy's in the
last bits; the tolerance is a few ulps of the magnitude of the terms that
make up each result (so cancellation is allowed for, as the stability
contract's condition number does).  NaN and +-inf must match exactly.
"""
import numpy as np
import pytest

from fastloss import reference as ref

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

ULPS = {np.float32: 4, np.float64: 16}
DTYPES = (np.float32, np.float64)


def assert_close(got, want, term_scale, dtype, what):
    """|got - want| <= ULPS * eps * (|want| + term_scale); NaN/inf exact."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    bad = np.flatnonzero(nan_g != nan_w)
    assert bad.size == 0, f"{what}: NaN mismatch at {bad[:5]}: got {got.flat[bad[:5]]} want {want.flat[bad[:5]]}"
    inf = np.isinf(want) | np.isinf(got)
    bad = np.flatnonzero(inf & (got != want))
    assert bad.size == 0, f"{what}: inf mismatch at {bad[:5]}: got {got.flat[bad[:5]]} want {want.flat[bad[:5]]}"
    ok = ~(nan_w | inf) & (got != want)
    fi = np.finfo(dtype)
    with np.errstate(all="ignore"):
        tol = ULPS[dtype] * float(fi.eps) * (np.abs(want) + np.abs(term_scale)) + float(fi.smallest_subnormal)
        err = np.where(ok, np.abs(got - want) - np.nan_to_num(tol, nan=np.inf), 0.0)
    k = int(np.argmax(err))
    assert err.flat[k] <= 0, (f"{what}: worst element {k}: got {got.flat[k]!r} want {want.flat[k]!r} "
                              f"(tolerance {tol.flat[k]:.3g})")
    # never an exact zero where the reference is a nonzero normal number
    zero = np.flatnonzero(ok & (got == 0) & (np.abs(want) >= fi.tiny))
    assert zero.size == 0, f"{what}: exact 0 where reference is {want.flat[zero[:5]]}"


def _run(mod, op, z, y, w, pw, scale, inplace=False):
    zz = z.copy()
    g = zz if inplace else np.empty_like(z)
    l = np.empty_like(z)
    with np.errstate(all="ignore"):
        s = mod.elementwise(op, zz, y, w, pw, g, l, scale)
    return s, g, l


def _extreme(dtype, rng):
    big = np.finfo(dtype).max
    special = [0.0, -0.0, 1e-40, -1e-40, 1e30, -1e30, big, -big, np.inf, -np.inf, np.nan,
               15.0, -15.0, 40.0, -40.0, 88.0, -88.0, 104.0, -104.0, 700.0, -700.0, 745.0, -745.0, 750.0, -750.0]
    z = np.concatenate([rng.standard_normal(400) * 4, rng.standard_normal(200) * 300, special]).astype(dtype)
    y = rng.random(z.size).astype(dtype)
    y[::4] = 1.0
    y[1::4] = 0.0
    return z, y


def _term_scales(op, z, y, w, pw, scale):
    """Magnitude of the terms summed into each element's loss and gradient."""
    zf, yf = z.astype(np.float64), y.astype(np.float64)
    wf = np.ones_like(zf) if w is None else np.abs(np.tile(w.astype(np.float64), zf.size // w.size))
    with np.errstate(all="ignore"):
        if op == "mse":
            m = np.abs(zf) + np.abs(yf)
            return wf * m * m, 2 * scale * wf * m
        s, sn = ref.sigmoid_pair(zf)
        if op == "sigmoid_mse":
            m = 1.0 + np.abs(yf)
            return wf * m * m, 2 * scale * wf * m * s * sn
        a = np.abs(yf) if pw is None else np.abs(np.tile(pw.astype(np.float64), zf.size // pw.size) * yf)
        return np.zeros_like(zf), scale * wf * (np.abs(1 - yf) * s + a * sn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ref.ELEMENTWISE_OPS)
@pytest.mark.parametrize("weights", ["none", "full", "scalar", "per_class", "zero_masks"])
def test_elementwise_matches_reference(op, dtype, weights):
    rng = np.random.default_rng(7)
    z, y = _extreme(dtype, rng)
    n = z.size - z.size % 5
    z, y = z[:n], y[:n]
    w = {"none": None, "full": rng.random(n), "scalar": np.array([0.7]), "per_class": rng.random(5) + 0.5,
         "zero_masks": np.array([0.0, 1.0, 2.5, 0.0, 1.0])}[weights]
    w = None if w is None else w.astype(dtype)
    pw = (rng.random(5) * 3).astype(dtype) if op == "sigmoid_bce" and weights != "none" else None
    scale = 1.0 / n
    s_ref, g_ref, l_ref = _run(ref, op, z, y, w, pw, scale)
    s_c, g_c, l_c = _run(c, op, z, y, w, pw, scale)
    ls, gs = _term_scales(op, z, y, w, pw, scale)
    assert_close(l_c, l_ref, ls, dtype, f"{op} loss")
    assert_close(g_c, g_ref, gs, dtype, f"{op} grad")
    assert_close(s_c, s_ref, np.sum(ls) + np.sum(np.abs(l_ref.astype(np.float64))), dtype, f"{op} sum")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ref.ELEMENTWISE_OPS)
def test_elementwise_optional_outputs_and_inplace(op, dtype):
    rng = np.random.default_rng(3)
    z, y = _extreme(dtype, rng)
    s, g, l = _run(c, op, z, y, None, None, 0.5)
    s_in, g_in, l_in = _run(c, op, z, y, None, None, 0.5, inplace=True)
    np.testing.assert_array_equal(g_in, g)
    np.testing.assert_array_equal(l_in, l)
    zz = z.copy()
    l2 = np.empty_like(z)
    sums = [s_in, c.elementwise(op, zz, y, None, None, None, None, 0.5),  # neither output
            c.elementwise(op, zz, y, None, None, None, l2, 0.5)]
    np.testing.assert_array_equal(sums, [s] * 3)
    np.testing.assert_array_equal(l2, l)
    np.testing.assert_array_equal(zz, z)  # inputs untouched


def _softmax_inputs(dtype, rng, R=48, C=37):
    z = (rng.standard_normal((R, C)) * 5).astype(dtype)
    z[1, 3] = np.inf                 # +inf entry: the limit
    z[2, :] = -np.inf                # every class masked: loss 0, grad 0
    z[3, 5] = np.nan                 # NaN row
    z[4, :5] = np.inf                # several +inf entries share the mass
    z[5, ::2] = -np.inf              # masked classes
    z[6] += dtype(1e7)               # shifted row
    z[7, :] = 1e30
    z[7, 0] = -1e30
    z[8, 4] = 60                     # p -> 1
    z[9, 2] = 800
    z[10, :] = np.finfo(dtype).max
    labels = rng.integers(0, C, R)
    labels[11] = -100                # ignored
    labels[5] = 1                    # label on a masked class: infinite loss
    labels[3] = -100                 # NaN wins over ignore (reference)
    probs = rng.random((R, C)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[12] = 0
    probs[12, 0] = 1
    return z, labels, probs


def _softmax_scales(op, z, t_labels, probs, w, smoothing, scale):
    """Magnitude of the terms of each row's loss and each gradient entry."""
    R, C = z.shape
    with np.errstate(all="ignore"):
        t, wf, _ = ref._target_matrix(t_labels, probs, w, -100, smoothing, R, C)
        zf = z.astype(np.float64)
        zf[np.isnan(zf).any(axis=1)] = 0
        m = zf.max(axis=1, keepdims=True)
        zf = np.where(m == -np.inf, 0.0, zf)
        m = np.where(m == -np.inf, 0.0, m)
        inf_row = m == np.inf
        sh = np.where(inf_row, np.where(zf == np.inf, 0.0, -np.inf), zf - np.where(inf_row, 0.0, m))
        e = np.exp(sh)
        p = e / e.sum(axis=1, keepdims=True)
        a = np.abs(t * wf)
        if op == "softmax_cross_entropy":
            A = a.sum(axis=1, keepdims=True)
            lsc = (a * (np.abs(zf) + np.log(C) + 1)).sum(axis=1)
            gsc = scale * (p * A + a)
            # argmax entry: (A - a) - A q cancels to p A - a, terms of size A
            rows = np.arange(R)
            am = np.nan_to_num(z.astype(np.float64), nan=0.0).argmax(axis=1)
            gsc[rows, am] = scale * (A[:, 0] + a[rows, am])
            return lsc, gsc
        wd = np.abs(wf) * (p + np.abs(t))
        return (wd * (p + np.abs(t))).sum(axis=1), 2 * scale * p * (wd + (wd * p).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,smoothing", [("softmax_cross_entropy", 0.0), ("softmax_cross_entropy", 0.1),
                                          ("softmax_mse", 0.0)])
@pytest.mark.parametrize("target", ["labels", "probs"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_matches_reference(op, smoothing, target, weighted, dtype):
    rng = np.random.default_rng(11)
    z, labels, probs = _softmax_inputs(dtype, rng)
    R, C = z.shape
    lab = labels if target == "labels" else None
    pr = probs if target == "probs" else None
    w = (rng.random(C) + 0.1).astype(dtype) if weighted else None
    if weighted:
        w[4] = 0  # zero class weight masks
    out = {}
    for mod in (ref, c):
        g, l = np.empty_like(z), np.empty(R)
        with np.errstate(all="ignore"):
            mod.softmax_rows(op, z, lab, pr, w, -100, smoothing, g, l, 0.25)
        out[mod.NAME] = g, l
    lsc, gsc = _softmax_scales(op, z, lab, pr, w, smoothing, 0.25)
    assert_close(out["c"][1], out["numpy"][1], lsc, np.float64 if dtype == np.float64 else np.float32, "loss")
    assert_close(out["c"][0], out["numpy"][0], gsc, dtype, "grad")

    zz = z.copy()  # in place: grad written over the logits
    l2 = np.empty(R)
    c.softmax_rows(op, zz, lab, pr, w, -100, smoothing, zz, l2, 0.25)
    np.testing.assert_array_equal(zz, out["c"][0])
    np.testing.assert_array_equal(l2, out["c"][1])
    l3 = np.empty(R)  # no gradient requested: same losses
    c.softmax_rows(op, z, lab, pr, w, -100, smoothing, None, l3, 0.25)
    np.testing.assert_array_equal(l3, out["c"][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 2), (1, 5000), (700, 3)])
def test_softmax_shapes(shape, dtype):
    rng = np.random.default_rng(5)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    for op in ref.SOFTMAX_OPS:
        res = []
        for mod in (ref, c):
            g, l = np.empty_like(z), np.empty(shape[0])
            mod.softmax_rows(op, z, labels, None, None, -100, 0.0, g, l, 1.0)
            res.append((g, l))
        lsc, gsc = _softmax_scales(op, z, labels, None, None, 0.0, 1.0)
        assert_close(res[1][1], res[0][1], lsc, dtype, f"{op} loss")
        assert_close(res[1][0], res[0][0], gsc, dtype, f"{op} grad")


def _half_tanh_ld(z):
    """sigmoid(z) - 1/2 = tanh(z/2)/2 in long double (64-bit significand on x86)."""
    return np.tanh(z.astype(np.longdouble) / 2) / 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_z_half_tanh_dense_sweep(dtype):
    """sigmoid(z) - 1/2 for |z| < 1 (expm1 from the exp reduction) to a few ulp.

    With y = 1/2, sigmoid_mse's residual is h itself (loss h^2) and
    sigmoid_bce's gradient is h: both would be 0 if h came from sigmoid(z)
    rounded to 1/2, and both are checked against long double.
    """
    fi = np.finfo(dtype)
    mag = np.concatenate([np.linspace(0, 1, 200001)[1:-1], np.geomspace(float(fi.smallest_subnormal), 1, 20001)[:-1]])
    z = np.concatenate([mag, -mag, [0.0, -0.0, np.nextafter(1.0, 0)]]).astype(dtype)
    y = np.full_like(z, 0.5)
    h = _half_tanh_ld(z)
    g, l = np.empty_like(z), np.empty_like(z)
    c.elementwise("sigmoid_bce", z, y, None, None, g, l, 1.0)
    c.elementwise("sigmoid_mse", z, y, None, None, None, l, 1.0)
    ulp = np.spacing(np.abs(h).astype(dtype)).astype(np.longdouble)
    tiny = np.abs(h) < fi.tiny  # subnormal h: absolute error of one subnormal step
    err_g = np.abs(g.astype(np.longdouble) - h) / np.where(tiny, float(fi.smallest_subnormal), ulp)
    assert float(err_g.max()) <= (4 if dtype == np.float64 else 1), z[np.argmax(err_g)]
    # loss = h^2 rounded once: compare relative to h^2 where that is normal
    h2 = h * h
    ok = h2 >= fi.tiny
    rel = np.abs(l.astype(np.longdouble)[ok] - h2[ok]) / h2[ok]
    assert float(rel.max()) <= (7 if dtype == np.float64 else 1) * float(fi.eps), z[ok][np.argmax(rel)]
    assert np.all(l[np.abs(z) > 0][:10] > 0)  # never an exact 0 at y = 1/2


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_mse_weight_goes_first(dtype):
    """w (z - y) before squaring: a tiny weight keeps huge residuals finite."""
    big = np.finfo(dtype).max / 2
    z = np.array([big, -big, 3.0, np.inf], dtype)
    y = np.array([-big, big, 1.0, 0.0], dtype)
    w = np.array([1e-300 if dtype == np.float64 else 1e-37, 1e-300 if dtype == np.float64 else 1e-37, 2.0, 0.0], dtype)
    g, l = np.empty_like(z), np.empty_like(z)
    c.elementwise("mse", z, y, w, None, g, l, 0.5)
    np.testing.assert_allclose(g[:3], [w[0] * 2 * big, -w[0] * 2 * big, 4.0], rtol=4 * np.finfo(dtype).eps)
    assert g[3] == 0 and l[3] == 0  # zero weight masks the infinite residual
    assert l[2] == 8.0 and np.isinf(l[0])  # (w d) d: the true loss overflows, the gradient does not


def test_softmax_mse_tied_rows_and_ce_argmax_sum():
    """Rows tied with the max keep tiny gradients; CE's argmax entry sums the other classes."""
    z = np.array([[-40.0, 0.0, 0.0, 0.0], [0.0, 0.0, -40.0, -40.0]])
    labels = np.array([0, 1])
    for op in ref.SOFTMAX_OPS:
        out = []
        for mod in (ref, c):
            g, l = np.empty_like(z), np.empty(2)
            mod.softmax_rows(op, z, labels, None, None, -100, 0.1 if op == "softmax_cross_entropy" else 0.0,
                             g, l, 1.0)
            out.append((g, l))
        np.testing.assert_allclose(out[1][0], out[0][0], rtol=16 * 2.0**-52, atol=0)
        np.testing.assert_allclose(out[1][1], out[0][1], rtol=16 * 2.0**-52, atol=0)
        assert np.all(out[1][0][:, :1] != 0)
