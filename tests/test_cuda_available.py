"""The CUDA backend reports clearly whether it can run here."""
import pytest

pytest.importorskip("numba.cuda")

from numba import config, cuda  # noqa: E402

import fastloss  # noqa: E402
from fastloss import _backends  # noqa: E402


@pytest.mark.skipif(bool(config.ENABLE_CUDASIM) or cuda.is_available(), reason="a GPU (or the simulator) is present")
def test_unavailable_without_gpu_names_the_simulator():
    with pytest.raises(_backends.BackendUnavailable, match="NUMBA_ENABLE_CUDASIM"):
        _backends.load("cuda")
    assert "cuda" not in fastloss.available_backends()
    with pytest.raises(_backends.BackendUnavailable, match="no usable CUDA GPU"):
        fastloss.mse([1.0], [0.0], backend="cuda")


def test_module_metadata():
    from fastloss import _cuda

    assert _cuda.NAME == "cuda"
    for name in ("check_available", "elementwise", "softmax_rows", "device_call"):
        assert callable(getattr(_cuda, name))
