"""Shared fixtures: every host backend that can run here is tested alike."""
from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss.registry import LOSSES

#: host backends (CUDA has its own simulator tests)
HOST_BACKENDS = [b for b in fastloss.available_backends() if b != "cuda"]
ELEMENTWISE = [n for n, s in LOSSES.items() if s.family == "elementwise"]
SOFTMAX = [n for n, s in LOSSES.items() if s.family == "softmax"]
ALL_OPS = ELEMENTWISE + SOFTMAX


def spy_backends(monkeypatch, names=HOST_BACKENDS):
    """Record which backend's kernels each call runs: the returned list gets
    a backend's name per kernel call (monkeypatch undoes the wrapping)."""
    from fastloss import _backends

    calls = []
    for name in names:
        mod = _backends.load(name)
        for fn in ("elementwise", "softmax_rows"):
            real = getattr(mod, fn)

            def spy(*args, _real=real, _name=name):
                calls.append(_name)
                return _real(*args)

            monkeypatch.setattr(mod, fn, spy)
    return calls


@pytest.fixture(params=HOST_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def threads():
    """``set_num_threads`` of the C backend; the setting is restored after the test."""
    c = pytest.importorskip("fastloss._c")
    old = c.set_num_threads(0)
    yield c.set_num_threads
    c.set_num_threads(old)
