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
