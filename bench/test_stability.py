"""The stability benchmark as tests: fastloss meets the contract, the harness sees peers fail."""
from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss import oracle, registry
from fastloss._bench import peers, stability

BACKENDS = [b for b in fastloss.available_backends() if b != "cuda"]
DTYPES = ["float32", "float64"]



@pytest.fixture(scope="module")
def records():
    impls = peers.fastloss_peers(BACKENDS) + [peers.NumpyTextbook()]
    recs = stability.run(impls, list(registry.LOSSES), DTYPES, oracle=oracle)
    return {(r["impl"], r["op"], r["dtype"]): r for r in recs}


def _cases():
    for b in BACKENDS:
        for op in registry.LOSSES:
            for dt in DTYPES:
                yield pytest.param(b, op, dt, id=f"{b}-{op}-{dt}")


@pytest.mark.parametrize("backend,op,dtype", list(_cases()))
def test_fastloss_meets_contract_on_sweeps(records, backend, op, dtype):
    r = records[(f"fastloss:{backend}", op, dtype)]
    assert "error" not in r, r
    assert (r["nonfinite"], r["zeros"], r["special"]) == (0, 0, 0), r
    assert r["max_err"] <= oracle.CONTRACT_ULPS[dtype], r


def test_harness_detects_textbook_failures(records):
    # textbook BCE takes log(1 - sigmoid(z)) = log(0) for large z: infinite loss where the truth is finite
    bce = records[("numpy", "sigmoid_bce", "float32")]
    assert bce["nonfinite"] > 0
    # textbook sigmoid+MSE forms 1 - s, which rounds to 0 and zeroes normal gradients
    assert records[("numpy", "sigmoid_mse", "float64")]["zeros"] > 0


def test_sweeps_cover_the_float_range():
    z, y = stability.elementwise_sweep(np.dtype("float32"))
    finite = z[np.isfinite(z)]
    assert finite.max() >= 1e30 and finite.min() <= -1e30
    assert np.isposinf(z).any() and np.isneginf(z).any() and np.isnan(z).any()
    assert set(np.unique(y)) == {0.0, 0.25, 1.0}
    zs, labels = stability.softmax_sweep(np.dtype("float64"))
    assert zs.shape[0] == labels.shape[0]
    assert np.isneginf(zs).any(axis=1).sum() > 5  # masked classes
    assert (np.abs(zs) > 1e30).any()
    assert ((labels >= 0) & (labels < zs.shape[1])).all()
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, max - (-max)
        gap = zs.max(axis=1, keepdims=True) - zs  # a class just below the max, not tied
    assert ((gap > 0) & (gap < 2.0 ** -30)).any(axis=1).sum() >= 3
