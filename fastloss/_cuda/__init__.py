"""CUDA backend (numba.cuda): fused loss kernels on the GPU.

Implements the backend kernel interface of :mod:`fastloss.reference` for
NumPy arrays (``elementwise``/``softmax_rows``: copy to the device, compute,
copy back) and :func:`device_call`, which the public API uses when an input
is a CUDA array (``__cuda_array_interface__``: CuPy, PyTorch, Numba...):
the data never leaves the device.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before numba is
imported) the same kernels run on the CPU with shared-memory reductions;
that is how CI tests them.  Real GPUs use warp-shuffle reductions, which CI
compiles to PTX (``tests/test_cuda_ptx.py``).
"""
from __future__ import annotations

from numba import cuda

from ._device import device_call
from ._elementwise import elementwise
from ._reduce import SIM
from ._softmax import softmax_rows

NAME = "cuda"


def check_available():
    """Raise ``RuntimeError`` unless a CUDA GPU and driver (or the simulator) exist."""
    if SIM:
        return
    if not cuda.is_available():
        raise RuntimeError(
            "no usable CUDA GPU/driver was found (numba.cuda.is_available() is False); "
            "set NUMBA_ENABLE_CUDASIM=1 before importing numba to run the kernels on the CPU simulator"
        )


__all__ = ["NAME", "check_available", "elementwise", "softmax_rows", "device_call"]
