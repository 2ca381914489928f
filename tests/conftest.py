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
