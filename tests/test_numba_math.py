"""The polynomial exp/log1p of fastloss._numba._math, swept against NumPy in ulps."""
from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from fastloss._numba import _math as M  # noqa: E402


@numba.njit(error_model="numpy")
def _exp_all(x, out):
    for i in range(x.size):
        out[i] = M.exp(x[i])


@numba.njit(error_model="numpy")
def _log1p_all(u, out):
    for i in range(u.size):
        out[i] = M.log1p01(u[i])


def _ulps(a, b):
    """Distance in representable doubles (both finite, same sign or zero)."""
    return np.abs(a.view(np.int64) - b.view(np.int64))


def test_exp_dense_sweep_within_1_ulp():
    x = np.concatenate([np.linspace(-746.0, 710.0, 400_001),
                        -np.logspace(-320, 2.86, 20_001), np.logspace(-320, 2.85, 20_001),
                        np.linspace(-745.2, -708.0, 20_001)])  # subnormal results
    got = np.empty_like(x)
    _exp_all(x, got)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    fin = np.isfinite(want)
    assert _ulps(got[fin], want[fin]).max() <= 1
    np.testing.assert_array_equal(got[~fin], want[~fin])


def test_exp_special_values():
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -745.2, -745.1, 709.78, 709.79, -1e300, 1e300])
    got = np.empty_like(x)
    _exp_all(x, got)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, np.exp(x))


def test_log1p01_dense_sweep_within_2_ulp():
    u = np.concatenate([np.linspace(0.0, 1.0, 400_001), np.logspace(-323.5, 0.0, 40_001),
                        [5e-324, 1e-310, 0.5, np.nextafter(0.5, 0.0), 1.0], [np.nan]])
    got = np.empty_like(u)
    _log1p_all(u, got)
    want = np.log1p(u)
    assert np.isnan(got[-1])
    assert _ulps(got[:-1], want[:-1]).max() <= 2
    sub = u[:-1] < 1e-300  # tiny/subnormal inputs come back exactly
    np.testing.assert_array_equal(got[:-1][sub], u[:-1][sub])


@numba.njit(error_model="numpy")
def _f32_all(x, u, ex, lg):
    for i in range(x.size):
        ex[i] = M.exp(np.float64(x[i]), True)
        lg[i] = M.log1p01(np.float64(u[i]), True)


def test_float32_series_round_within_1_ulp():
    """The shorter float32 series: once rounded to float32, within 1 ulp."""
    x = np.concatenate([np.linspace(-104.0, 88.7, 200_001), -np.logspace(-45, 2, 20_001)]).astype(np.float32)
    u = np.concatenate([np.linspace(0.0, 1.0, 200_001), np.logspace(-45.5, 0.0, 20_001)]).astype(np.float32)
    ex, lg = np.empty(x.size), np.empty(u.size)
    _f32_all(x, u, ex, lg)
    want_e = np.exp(x.astype(np.float64)).astype(np.float32)
    want_l = np.log1p(u.astype(np.float64)).astype(np.float32)
    assert np.abs(ex.astype(np.float32).view(np.int32) - want_e.view(np.int32)).max() <= 1
    assert np.abs(lg.astype(np.float32).view(np.int32) - want_l.view(np.int32)).max() <= 1


@numba.njit(error_model="numpy")
def _half_tanh_all(z, f32, out, em1):
    for i in range(z.size):
        out[i] = M.sigmoid_parts(z[i], f32)[3]
        em1[i] = M.exp_em1(z[i], f32)[1]


def _small_z_sweep():
    """|z| < 1 densely, down to subnormals, both signs (where h is used)."""
    pos = np.concatenate([np.linspace(0.0, 1.0, 200_001)[1:-1], np.logspace(-323, 0.0, 20_001)[:-1],
                          [5e-324, 1e-310, np.nextafter(1.0, 0.0), 0.5, np.log(2) / 2]])
    return np.concatenate([pos, -pos, [0.0]])


def test_half_tanh_dense_sweep_within_3_true_ulp():
    """sigmoid(z) - 1/2 for |z| < SMALL_Z against 0.5 * np.tanh(z/2); expm1 too."""
    z = _small_z_sweep()
    h, em1 = np.empty_like(z), np.empty_like(z)
    _half_tanh_all(z, False, h, em1)
    want = 0.5 * np.tanh(0.5 * z)
    assert np.array_equal(np.sign(h), np.sign(want))
    err = _ulps(np.abs(h), np.abs(want))
    assert err.max() <= 4  # 3 ulp of the true value + np.tanh's own 1 ulp
    neg = z <= 0  # used only as expm1(-|z|)
    assert _ulps(np.abs(em1[neg]), np.abs(np.expm1(z[neg]))).max() <= 1
    mpmath = pytest.importorskip("mpmath")
    worst = np.argsort(-err, kind="stable")[:500]
    with mpmath.workdps(40):
        true = np.array([float(mpmath.tanh(mpmath.mpf(v) / 2) / 2) for v in z[worst]])
    assert _ulps(np.abs(h[worst]), np.abs(true)).max() <= 3
    tiny = np.abs(z) < 1e-300  # subnormal h kept: z/4 exactly
    np.testing.assert_array_equal(h[tiny], 0.25 * z[tiny])


def test_half_tanh_float32_series_within_1_ulp():
    z = _small_z_sweep()
    z = z[np.abs(z) >= 1e-45].astype(np.float32).astype(np.float64)
    h, em1 = np.empty_like(z), np.empty_like(z)
    _half_tanh_all(z, True, h, em1)
    want = (0.5 * np.tanh(0.5 * z)).astype(np.float32)
    got = h.astype(np.float32)
    assert np.abs(np.abs(got).view(np.int32) - np.abs(want).view(np.int32)).max() <= 1
    assert np.array_equal(np.sign(got), np.sign(want))


@numba.njit(error_model="numpy")
def _f32_parts_all(z, s, sn, e, h, em1, l1):
    for i in range(z.size):
        s[i], sn[i], e[i], h[i] = M.sigmoid_parts_f32(z[i])
        em1[i] = M.exp_em1_f32(-abs(z[i]))[1]
        l1[i] = M.log1p01_f32(np.float32(e[i]))


def test_float32_path_within_1_ulp():
    """The float32-input helpers (float32 polynomials, float64 finish): exp,
    sigmoid(+-z) and tanh(z/2)/2 within 1 float32 ulp, exp keeping 24 bits
    below float32's range, exact special values."""
    mag = np.concatenate([_small_z_sweep(), np.linspace(-110.0, 110.0, 200_001)])
    z = mag[(np.abs(mag) >= 1e-45) | (mag == 0)].astype(np.float32)
    out = [np.empty(z.size) for _ in range(5)] + [np.empty(z.size, np.float32)]
    _f32_parts_all(z, *out)
    s, sn, e, h, em1, l1 = out
    z64 = z.astype(np.float64)

    def ulps32(got, want):  # float32 ulps of the float64 truth, as if the exponent were unbounded
        ulp = np.ldexp(1.0, np.frexp(want)[1] - 24)
        return np.where(got == want, 0.0, np.abs(got - want) / ulp)

    want_e = np.exp(-np.abs(z64))  # float64 truth, ~1e-16 relative
    big, small = 1 / (1 + want_e), want_e / (1 + want_e)
    assert ulps32(e, want_e).max() <= 1
    assert ulps32(s, np.where(z64 >= 0, big, small)).max() <= 1
    assert ulps32(sn, np.where(z64 >= 0, small, big)).max() <= 1
    small = np.abs(z64) < M.SMALL_Z
    assert ulps32(h[small], 0.5 * np.tanh(z64[small] / 2)).max() <= 1
    assert ulps32(em1[small], np.expm1(-np.abs(z64[small]))).max() <= 1
    # log1p of e rounded to float32 (0.5 ulp), the float32 quotient t =
    # 2v/(2+v) and the final sum (measured max 2.3 ulp in all): sigmoid_bce's
    # loss max(+-z, 0) + log1p(e) stays within the 4-ulp contract
    used = e >= 2.0**-25  # below, sigmoid_bce uses log1p(e) = e
    lt = np.log1p(e[used])
    assert ulps32(l1[used].astype(np.float64), lt).max() <= 3
    sp = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    out = [np.empty(sp.size) for _ in range(5)] + [np.empty(sp.size, np.float32)]
    _f32_parts_all(sp, *out)
    s, sn, e, h = out[:4]
    assert s[:2].tolist() == [1.0, 0.0] and sn[:2].tolist() == [0.0, 1.0] and e[:2].tolist() == [0.0, 0.0]
    assert np.isnan([s[2], sn[2], e[2], h[2]]).all()
    assert s[3:].tolist() == [0.5, 0.5] and e[3:].tolist() == [1.0, 1.0] and h[3] == 0.0
