"""fastloss: fused forward+backward loss kernels that stay right at extreme logits.

One call computes a loss and its gradient with respect to the logits in one
pass over memory, on NumPy arrays (and CUDA device arrays), with Numba, C
and CUDA kernels behind one dispatch and a careful NumPy reference.
"""
from ._api import mse, sigmoid_bce, sigmoid_mse, softmax_cross_entropy, softmax_mse
from ._backends import BackendUnavailable, auto_backend, available_backends

__version__ = "0.1.0"

__all__ = [
    "mse",
    "sigmoid_mse",
    "sigmoid_bce",
    "softmax_cross_entropy",
    "softmax_mse",
    "available_backends",
    "auto_backend",
    "BackendUnavailable",
]
