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
