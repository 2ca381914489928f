"""The stability benchmark as tests: fastloss meets the contract, the harness sees peers fail."""
from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss import oracle, registry
from fastloss._bench import peers, stability

BACKENDS = [b for b in fastloss.available_backends() if b != "cuda"]
DTYPES = ["float32", "float64"]

#: known reference defect, reported to the lead: softmax_mse's gradient
#: d_j - sum_k d_k p_k cancels when the labelled class has p ~ 0 (rows like
#: [-40, 0, 0, 0] with label 0 give exact zeros / wrong tiny gradients).
#: strict: the mark fails as soon as the reference is fixed, so it gets removed.
KNOWN = {(b, "softmax_mse") for b in ("numpy", "numba", "c")}  # numba, c mirror the reference


@pytest.fixture(scope="module")
def records():
    impls = peers.fastloss_peers(BACKENDS) + [peers.NumpyTextbook()]
    recs = stability.run(impls, list(registry.LOSSES), DTYPES, oracle=oracle)
    return {(r["impl"], r["op"], r["dtype"]): r for r in recs}


def _cases():
    for b in BACKENDS:
        for op in registry.LOSSES:
            mark = pytest.mark.xfail(strict=True, reason="reference softmax_mse gradient cancellation") \
                if (b, op) in KNOWN else ()
            yield pytest.param(b, op, marks=mark, id=f"{b}-{op}")


@pytest.mark.parametrize("backend,op", list(_cases()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_fastloss_meets_contract_on_sweeps(records, backend, op, dtype):
    r = records[(f"fastloss:{backend}", op, dtype)]
    assert "error" not in r, r
    assert (r["nonfinite"], r["zeros"], r["special"]) == (0, 0, 0), r
    assert r["max_err"] <= 4.0, r


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
