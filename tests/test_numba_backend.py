"""The numba backend against fastloss.reference, op by op, option by option.

Inputs mix ordinary values with the extremes of the stability contract
(+-1000, +-1e30, +-inf, NaN, subnormals, masked/inf/NaN softmax rows,
shifted rows c + [1, 0, 0], dominant labels).  The kernels mirror the
reference formulas, so they agree to a few ulp scaled by each formula's own
cancellation (``_close``).
"""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

numba = pytest.importorskip("numba")
B = pytest.importorskip("fastloss._numba")
from fastloss import reference as _ref  # noqa: E402
from fastloss._numba import _softmax as S  # noqa: E402


class R:
    """The reference, with float32 overflow-on-cast warnings silenced (it
    casts outside its errstate; inf there is the intended result)."""

    ELEMENTWISE_OPS = _ref.ELEMENTWISE_OPS
    SOFTMAX_OPS = _ref.SOFTMAX_OPS

    @staticmethod
    def elementwise(*args):
        with np.errstate(over="ignore"):
            return _ref.elementwise(*args)

    @staticmethod
    def softmax_rows(*args):
        with np.errstate(over="ignore"):
            return _ref.softmax_rows(*args)

DTYPES = (np.float32, np.float64)
ULPS = 8  # allowed error in ulps of the formula's magnitude (per dtype eps)
EXTREMES = [0.0, -0.0, 1.0, -1.0, 17.0, -17.0, 40.0, -40.0, 90.0, -90.0, 103.0, -103.0, 740.0, -740.0,
            1000.0, -1000.0, 1e30, -1e30,
            np.inf, -np.inf, np.nan, 1e-40, -1e-40, 5e-324, 3e38, -3e38]


def _close(got, ref, mag, dt, what):
    """``|got - ref| <= ULPS * eps * (|ref| + mag)``, NaN/inf matching exactly."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    eps = np.finfo(dt).eps
    tiny = np.finfo(dt).smallest_subnormal
    with np.errstate(invalid="ignore", over="ignore"):
        same = (got == ref) | (np.isnan(got) & np.isnan(ref))
        tol = ULPS * eps * (np.abs(ref) + np.abs(mag)) + 2 * tiny
        ok = same | (np.abs(got - ref) <= tol)
    if not ok.all():
        i = np.flatnonzero(~ok.ravel())[:5]
        pytest.fail(f"{what}: {(~ok).sum()} mismatches, e.g. at {i}: got {got.ravel()[i]} "
                    f"ref {ref.ravel()[i]} tol {tol.ravel()[i]}")


def _ew_inputs(op, dt, n, rng):
    z = rng.standard_normal(n) * 4
    k = len(EXTREMES)
    z[:k] = EXTREMES
    z[k:2 * k] = EXTREMES
    y = rng.random(n)
    y[k:2 * k] = 1.0
    y[2 * k:3 * k] = 0.0
    y[3 * k] = -2.0  # out-of-range targets are allowed for mse
    if op != "mse":
        y = np.clip(y, 0.0, 1.0)
    y[3 * k + 1] = np.nan
    with np.errstate(over="ignore"):
        return z.astype(dt), y.astype(dt)


def _ew_mag(op, z, y, w, pw, scale):
    """Magnitude of the terms each elementwise formula adds (its cancellation)."""
    z = z.astype(np.float64)
    y = y.astype(np.float64)
    wf = 1.0 if w is None else np.abs(np.tile(w.astype(np.float64), z.size // w.size))
    with np.errstate(all="ignore"):
        s = 1 / (1 + np.exp(-z))
        sn = 1 / (1 + np.exp(z))
        if op == "mse":
            m = np.abs(z) + np.abs(y)
            return wf * m * m, wf * 2 * abs(scale) * m
        if op == "sigmoid_mse":
            m = 1 + np.abs(y)
            return wf * m * m, wf * 2 * abs(scale) * m * s * sn
        a = y if pw is None else np.tile(pw.astype(np.float64), z.size // pw.size) * y
        return 0.0, wf * abs(scale) * (np.abs(1 - y) * s + np.abs(a) * sn)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", R.ELEMENTWISE_OPS)
@pytest.mark.parametrize("wmode", ["none", "full", "scalar", "periodic"])
def test_elementwise_matches_reference(op, dt, wmode):
    rng = np.random.default_rng(hash((op, wmode)) % 2**32)
    n = 7 * 130  # several blocks' worth of remainders, periodic P = 7
    z, y = _ew_inputs(op, dt, n, rng)
    P = {"none": 0, "full": n, "scalar": 1, "periodic": 7}[wmode]
    w = None if not P else rng.random(P).astype(dt) * 3
    if w is not None:
        w[0] = 0.0  # a zero weight masks inf/NaN-free infinities exactly
    pw = None
    if op == "sigmoid_bce" and wmode != "none":
        pw = (rng.random(P) * 4).astype(dt)
    scale = 0.37
    g, l = np.empty_like(z), np.empty_like(z)
    g2, l2 = np.empty_like(z), np.empty_like(z)
    tot = B.elementwise(op, z, y, w, pw, g, l, scale)
    tot2 = R.elementwise(op, z, y, w, pw, g2, l2, scale)
    lmag, gmag = _ew_mag(op, z, y, w, pw, scale)
    _close(g, g2, gmag, dt, "grad")
    _close(l, l2, lmag, dt, "loss")
    _close(tot, tot2, np.nansum(np.abs(l2.astype(np.float64))), np.float64, "sum")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", R.ELEMENTWISE_OPS)
def test_elementwise_in_place_and_optional_outputs(op, dt):
    rng = np.random.default_rng(1)
    z, y = _ew_inputs(op, dt, 3000, rng)
    g_ref = np.empty_like(z)
    tot_ref = B.elementwise(op, z, y, None, None, g_ref, None, 0.5)
    np.testing.assert_equal(B.elementwise(op, z, y, None, None, None, None, 0.5), tot_ref)
    zz = z.copy()
    np.testing.assert_equal(B.elementwise(op, zz, y, None, None, zz, None, 0.5), tot_ref)  # grad is z
    np.testing.assert_array_equal(zz, g_ref)


def _softmax_inputs(dt, R_, C, rng):
    z = rng.standard_normal((R_, C)) * 3
    z[0] = -np.inf  # every class masked
    z[1, 2] = np.nan
    z[2, 3] = np.inf  # one +inf entry
    z[3, :3] = np.inf  # several
    z[4] = 1e7
    z[4, 0] += 1.0  # shifted row c + [1, 0, 0]
    z[5, 1] = 1000.0  # dominant class
    z[6, ::2] = -np.inf  # masked classes
    z[7] = 1e30 * np.sign(z[7])
    z[8] = 40.0
    z[8, 0] = -40.0
    z[9] = 1e-40
    return z.astype(dt)


def _softmax_p(z):
    """Reference probabilities (for the tolerance of cancelling gradient terms)."""
    z = z.astype(np.float64)
    with np.errstate(all="ignore"):
        m = np.max(np.where(np.isnan(z), -np.inf, z), axis=1, keepdims=True)
        inf_row = np.isinf(m) & (m > 0)
        e = np.where(inf_row, (z == np.inf) * 1.0, np.exp(z - m))
        return np.nan_to_num(e / e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", R.SOFTMAX_OPS)
@pytest.mark.parametrize("mode", ["labels", "probs", "smooth", "weight", "weight_probs"])
@pytest.mark.parametrize("C", [9, 83])  # the short-row and the vectorised max pass
def test_softmax_matches_reference(op, dt, mode, C):
    if op == "softmax_mse" and mode == "smooth":
        pytest.skip("smoothing is a cross-entropy option")
    rng = np.random.default_rng(hash((op, mode)) % 2**32)
    R_ = 40
    z = _softmax_inputs(dt, R_, C, rng)
    if C > 9:
        z[11, [5, 40, 77]] = z[11].max() + 1.0  # tied maxima: the first one counts
        z[12, :] = -0.0
        z[12, 50] = 0.0  # -0 and +0 tie
        z[13, 70] = np.nan  # NaN late in a long row
    labels = rng.integers(0, C, R_)
    labels[5] = 1  # the dominant class
    labels[10] = -100  # ignored
    labels[6] = 0  # a masked class as the label: infinite loss
    labels[11] = 40 if C > 9 else labels[11]  # a tied maximum, not the first
    probs = None
    if "probs" in mode:
        probs = rng.random((R_, C)).astype(dt)
        probs[:, 4] = 0.0
        probs /= probs.sum(axis=1, keepdims=True)
        labels = None
    w = (rng.random(C) * 2).astype(dt) if "weight" in mode else None
    eps = 0.1 if mode == "smooth" else 0.0
    scale = 0.25
    g, l = np.empty_like(z), np.empty(R_)
    g2, l2 = np.empty_like(z), np.empty(R_)
    total = B.softmax_rows(op, z, labels, probs, w, -100, eps, g, l, scale)
    R.softmax_rows(op, z, labels, probs, w, -100, eps, g2, l2, scale)
    assert total == pytest.approx(math.fsum(l), rel=16 * 2.0**-53, abs=0.0, nan_ok=True)
    p = _softmax_p(z)
    t = probs.astype(np.float64) if probs is not None else np.eye(C)[np.where(labels < 0, 0, labels)]
    t = t * (1 - eps) + eps / C
    wf = np.ones(C) if w is None else w.astype(np.float64)
    if op == "softmax_cross_entropy":
        a = t * wf
        gmag = scale * (p * a.sum(1, keepdims=True) + a)
        # The reference's argmax entry is A' - A q (A' = the other classes'
        # a): both backends round its two terms, so it carries their size
        # (exact when p_argmax -> 1, the case it exists for).
        rows = np.arange(R_)
        am = np.argmax(np.where(np.isnan(z), -np.inf, z), axis=1)
        a_rest = a.sum(1) - a[rows, am]
        gmag[rows, am] += scale * (a_rest + a.sum(1) * (1 - p[rows, am]))
    else:
        gmag = 2 * scale * p * (wf * (p + t) + (wf * (p + t) * p).sum(1, keepdims=True))
    _close(g, g2, gmag, dt, "grad")
    _close(l, l2, 0.0, dt, "loss")
    # in place: grad is z
    zz = z.copy()
    l3 = np.empty(R_)
    total3 = B.softmax_rows(op, zz, labels, probs, w, -100, eps, zz, l3, scale)
    np.testing.assert_array_equal(zz, g)  # the same bits in place
    np.testing.assert_array_equal(l3, l)
    l4 = np.empty(R_)  # loss only: the scratch-row path, the same bits
    total4 = B.softmax_rows(op, z, labels, probs, w, -100, eps, None, l4, scale)
    np.testing.assert_array_equal(l4, l)
    assert np.array([total3, total4]).tobytes() == np.array([total, total]).tobytes()  # same bits (NaN too)


@pytest.mark.parametrize("shape", [(64, 1), (3, 2), (1, 5000)])
def test_softmax_odd_shapes(shape):
    rng = np.random.default_rng(3)
    z = rng.standard_normal(shape) * 10
    labels = rng.integers(0, shape[1], shape[0])
    g, l = np.empty_like(z), np.empty(shape[0])
    g2, l2 = np.empty_like(z), np.empty(shape[0])
    B.softmax_rows("softmax_cross_entropy", z, labels, None, None, -100, 0.0, g, l, 1.0)
    R.softmax_rows("softmax_cross_entropy", z, labels, None, None, -100, 0.0, g2, l2, 1.0)
    _close(g, g2, np.abs(g2) + 1e-300, np.float64, "grad")
    _close(l, l2, 0.0, np.float64, "loss")


def test_parallel_paths_match_reference():
    """Sizes above the serial thresholds (the prange kernels)."""
    rng = np.random.default_rng(4)
    n = B.SERIAL_ELEMENTS["sigmoid_bce"] + 12345
    z = rng.standard_normal(n).astype(np.float32) * 5
    y = rng.random(n).astype(np.float32)
    g, g2 = np.empty_like(z), np.empty_like(z)
    tot = B.elementwise("sigmoid_bce", z, y, None, None, g, None, 1.0)
    tot2 = R.elementwise("sigmoid_bce", z, y, None, None, g2, None, 1.0)
    assert abs(tot - tot2) <= 1e-8 * abs(tot2)  # float32: per-element float32-grade terms
    _close(g, g2, np.abs(g2) + 1.0, np.float32, "grad")
    z2 = rng.standard_normal((B.SERIAL_SOFTMAX // 50 + 7, 100)) * 5
    labels = rng.integers(0, 100, z2.shape[0])
    g, l = np.empty_like(z2), np.empty(z2.shape[0])
    g2, l2 = np.empty_like(z2), np.empty(z2.shape[0])
    B.softmax_rows("softmax_cross_entropy", z2, labels, None, None, -100, 0.0, g, l, 1.0)
    R.softmax_rows("softmax_cross_entropy", z2, labels, None, None, -100, 0.0, g2, l2, 1.0)
    _close(g, g2, np.abs(g2), np.float64, "grad")
    _close(l, l2, 0.0, np.float64, "loss")


def test_reduced_loss_bitwise_identical_across_thread_counts():
    rng = np.random.default_rng(5)
    n = B.SERIAL_ELEMENTS["sigmoid_bce"] + 7 * 65536 + 999  # parallel path, many chunks
    z = (rng.standard_normal(n) * 30).astype(np.float32)
    y = rng.random(n).astype(np.float32)
    old = numba.get_num_threads()
    try:
        totals = []
        for k in sorted({1, 2, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(k)
            totals.append(B.elementwise("sigmoid_bce", z, y, None, None, None, None, 1.0))
    finally:
        numba.set_num_threads(old)
    assert len(set(totals)) == 1, totals
    # the serial chunk loop gives the same bits as the parallel one
    from fastloss._numba import _elementwise as E

    e = np.empty(0, np.float32)
    serial, parallel = E.KERNELS["sigmoid_bce"][False]
    part = np.empty(-(-n // E.CHUNK))
    parallel(z, y, e, e, e, e, 1.0, part)
    assert serial(z, y, e, e, e, e, 1.0, part.size) == totals[0]  # serial path, same bits
    # the specialised no-weights/gradient kernels: same bits serial and parallel
    serial, parallel = E.KERNELS["sigmoid_bce"][True]
    g1, g2 = np.empty_like(z), np.empty_like(z)
    parallel(z, y, e, e, g1, e, 1.0, part)
    assert serial(z, y, e, e, g2, e, 1.0, part.size) == sum(part.tolist())
    np.testing.assert_array_equal(g1, g2)


def test_concurrent_python_threads():
    """Calls from several Python threads neither crash nor mix results."""
    rng = np.random.default_rng(6)
    n = B.SERIAL_ELEMENTS["sigmoid_mse"] + 1000
    z = rng.standard_normal(n)
    y = rng.random(n)
    want = B.elementwise("sigmoid_mse", z, y, None, None, None, None, 1.0)
    got, errors = [], []

    def work():
        try:
            for _ in range(5):
                got.append(B.elementwise("sigmoid_mse", z, y, None, None, None, None, 1.0))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == [want] * 20


def test_read_only_inputs():
    """Read-only arrays (a different numba type) compile and agree."""
    rng = np.random.default_rng(7)
    z, y = rng.standard_normal(500), rng.random(500)
    w, pw = rng.random(500), rng.random(10)
    g1, g2 = np.empty(500), np.empty(500)
    t1 = B.elementwise("sigmoid_bce", z, y, w, pw, g1, None, 1.0)
    for a in (z, y, w, pw):
        a.flags.writeable = False
    assert B.elementwise("sigmoid_bce", z, y, w, pw, g2, None, 1.0) == t1
    np.testing.assert_array_equal(g1, g2)
    z2 = rng.standard_normal((6, 5))
    labels = np.array([0, 1, 2, 3, 4, -100])
    l1, l2 = np.empty(6), np.empty(6)
    B.softmax_rows("softmax_cross_entropy", z2, labels, None, None, -100, 0.1, None, l1, 1.0)
    z2.flags.writeable = False
    labels.flags.writeable = False
    B.softmax_rows("softmax_cross_entropy", z2, labels, None, None, -100, 0.1, None, l2, 1.0)
    np.testing.assert_array_equal(l1, l2)


@pytest.mark.parametrize("dt", DTYPES)
def test_softmax_mse_tied_rows_match_reference(dt):
    """Ties with the max: tiny gradients that a plain sum would cancel to noise.

    Row 1 holds an entry 2**-60 below the max: its exp rounds to 1 but, as in
    the reference, it is not tied (the tag comes from z == m, not e == 1).
    """
    z = np.array([[-40.0, 0.0, 0.0, 0.0], [0.0, -2.0 ** -60, -40.0, -40.0],
                  [0.0, 0.0, -40.0, -40.0], [5.0, 5.0, 5.0, 5.0]], dtype=dt)
    for labels in (np.array([0, 0, 2, 1]), np.array([1, 1, 0, 3])):
        for w in (None, np.array([0.5, 2.0, 1.0, 3.0], dtype=dt)):
            g, l = np.empty_like(z), np.empty(4)
            g2, l2 = np.empty_like(z), np.empty(4)
            B.softmax_rows("softmax_mse", z, labels, None, w, -100, 0.0, g, l, 1.0)
            R.softmax_rows("softmax_mse", z, labels, None, w, -100, 0.0, g2, l2, 1.0)
            _close(g, g2, 0.0, dt, "grad")
            _close(l, l2, 0.0, dt, "loss")


@pytest.mark.parametrize("op", ["sigmoid_mse", "sigmoid_bce"])
def test_plain_float32_loss_above_float32_range(op):
    """Plain float32 calls sum a block's losses from a float32 buffer; a loss
    above float32's range (huge targets) must not turn a finite mean into inf:
    that block is summed again in float64.  In place (out=z) takes the
    general kernel and must agree."""
    rng = np.random.default_rng(11)
    n = 3 * 1024 + 5
    z = rng.standard_normal(n).astype(np.float32)
    y = rng.random(n).astype(np.float32)
    y[[17, 2000]] = [1e20, -3e19]  # (s - y)^2 ~ 1e40 > float32 max
    if op == "sigmoid_bce":  # y softplus(-z) ~ 1e39, (1 - y) softplus(z) ~ 1.5e39
        z[[17, 2000]] = [-1e19, 5e19]
    g, g2 = np.empty_like(z), np.empty_like(z)
    tot = B.elementwise(op, z, y, None, None, g, None, 1.0 / n)
    tot2 = R.elementwise(op, z, y, None, None, g2, None, 1.0 / n)
    assert np.isfinite(tot) and tot > 1e30
    _close(tot, tot2, 0.0, np.float32, "mean")
    _close(g, g2, np.abs(g2), np.float32, "grad")
    zz = z.copy()
    tot3 = B.elementwise(op, zz, y, None, None, zz, None, 1.0 / n)  # gradient over z
    assert tot3 == tot
    np.testing.assert_array_equal(zz, g)


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_mse"])
@pytest.mark.parametrize("dt", DTYPES)
def test_short_row_path(dt, op):
    """Plain cross-entropy / softmax_mse with C <= SMALL_C run across rows;
    rows needing the general treatment (NaN, +-inf, ignored, masked label)
    are redone per row; ties (one tied with the label, a whole row tied) and
    a dominant class take the tie-aware formulas.  Many blocks (parallel
    path), against the reference, in place and not, loss only."""

    rng = np.random.default_rng(21)
    R_, C = S._RB * 3 + 17, 7
    z = (rng.standard_normal((R_, C)) * 5).astype(dt)
    labels = rng.integers(0, C, R_)
    z[3, 2] = np.nan
    labels[4] = -100
    z[5] = -np.inf
    z[6, 1] = np.inf
    z[7, 3] = -np.inf
    labels[7] = 3  # masked label: inf loss
    z[8, [1, 4]] = z[8].max() + 1  # tie: the first argmax
    labels[8] = 4
    z[9] = 0.0
    z[10, 0] = 200.0  # dominant class, p_y -> 1
    labels[10] = 0
    z[11, [2, 5]] = z[11].max() + 40  # two tied classes hold the mass, the label not among them
    labels[11] = 0
    scale = 1.0 / R_
    g, l = np.empty_like(z), np.empty(R_)
    g2, l2 = np.empty_like(z), np.empty(R_)
    with np.errstate(invalid="ignore"):
        B.softmax_rows(op, z, labels, None, None, -100, 0.0, g, l, scale)
        R.softmax_rows(op, z, labels, None, None, -100, 0.0, g2, l2, scale)
    _close(l, l2, 0.0, dt, "loss")
    _close(g, g2, scale, dt, "grad")
    zz = z.copy()
    l3 = np.empty(R_)
    total3 = B.softmax_rows(op, zz, labels, None, None, -100, 0.0, zz, l3, scale)
    np.testing.assert_array_equal(zz, g)
    np.testing.assert_array_equal(l3, l)
    l4 = np.empty(R_)
    total4 = B.softmax_rows(op, z, labels, None, None, -100, 0.0, None, l4, scale)
    np.testing.assert_array_equal(l4, l)
    # the NaN row makes the total NaN on every path
    assert math.isnan(total3) and math.isnan(total4)


def test_log1p_pos_against_numpy():
    from fastloss._numba._softmax import log1p_pos

    s = np.concatenate([[0.0, 5e-324, 1e-300, 1e-17, 2.0**-53, 1e-8, 0.5, 1.0, 2.0, 31.0],
                        np.geomspace(1e-20, 1e6, 20001)])
    got = np.array([log1p_pos(v) for v in s])
    want = np.log1p(s)
    assert (np.abs(got - want) <= 2 * np.spacing(want)).all()


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", R.ELEMENTWISE_OPS)
def test_reduced_loss_same_bits_for_every_call_form(op, dt):
    """Ordinary (all finite) inputs over several chunks: the reduced loss has
    the same bits with a gradient (the plain kernels), without one, with
    weights of 1, and with the gradient written over z."""
    rng = np.random.default_rng(17)
    n = 3 * 16384 + 77
    z = (rng.standard_normal(n) * 4).astype(dt)
    y = rng.random(n).astype(dt)
    g = np.empty_like(z)
    tot = B.elementwise(op, z, y, None, None, g, None, 0.5)
    assert np.isfinite(tot)
    assert B.elementwise(op, z, y, None, None, None, None, 0.5) == tot
    assert B.elementwise(op, z, y, np.ones(1, dt), None, g.copy(), None, 0.5) == tot
    zz = z.copy()
    assert B.elementwise(op, zz, y, None, None, zz, None, 0.5) == tot
    np.testing.assert_array_equal(zz, g)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 64, 65, 1000, 1024, 1025, 5000])
def test_rows_total(n):
    """The kernels' reduced loss: a fixed-order tree sum, accurate, and
    NaN/inf propagate."""
    from fastloss._numba._softmax import rows_total

    rng = np.random.default_rng(n)
    loss = rng.random(n) * 10.0 ** rng.integers(-3, 4, n)
    before = loss.copy()
    total = rows_total(loss)
    np.testing.assert_array_equal(loss, before)  # whole blocks are summed where they lie, untouched
    # tree depth <= 5 per 1024-row block, then the block sums in order
    assert total == pytest.approx(math.fsum(loss), rel=(5 + n // 1024 + 1) * 2.0**-53, abs=0.0)
    assert rows_total(loss.copy()).hex() == total.hex()
    loss[n // 2] = np.inf
    assert rows_total(loss) == np.inf
    loss[n - 1] = np.nan
    assert math.isnan(rows_total(loss))
    assert rows_total(np.empty(0)) == 0.0


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_mse"])
@pytest.mark.parametrize("C", [7, 300])
def test_softmax_total_thread_independent(op, C):
    """The serial and parallel kernels return the same bits for the reduced loss."""
    rng = np.random.default_rng(C)
    R_ = 3000
    z = rng.standard_normal((R_, C)).astype(np.float32) * 4
    labels = rng.integers(0, C, R_)
    args = (S.CE if op == "softmax_cross_entropy" else S.SMSE, z, labels)
    l1, l2 = np.empty(R_), np.empty(R_)
    g1, g2 = np.empty_like(z), np.empty_like(z)
    if C <= S.SMALL_C:
        t1 = S.small_serial(*args, -100, g1, l1, 1.0, 2.0**100)
        t2 = S.small_parallel(*args, -100, g2, l2, 1.0, 2.0**100)
    else:
        rest = (np.empty((0, 0), z.dtype), np.empty(0, z.dtype), -100, 0.0)
        t1 = S.softmax_serial(*args, *rest, g1, l1, 1.0, 2.0**100)
        t2 = S.softmax_parallel(*args, *rest, g2, l2, 1.0, 2.0**100)
    np.testing.assert_array_equal(l1, l2)
    assert t1.hex() == t2.hex()
    assert t1 == pytest.approx(math.fsum(l1), rel=8 * 2.0**-53, abs=0.0)
