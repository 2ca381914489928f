"""C backend: the kernels of ``csrc/`` through cffi (the only module touching ``lib``).

Implements the backend kernel interface documented in
:mod:`fastloss.reference`.  Arrays pass zero-copy (``ffi.from_buffer``);
the C calls release the GIL (cffi does so for every API-mode call) and use
``FASTLOSS_NUM_THREADS`` threads (default: the CPUs this process may use)
for large inputs.
"""
from __future__ import annotations

import numpy as np

try:
    from ._fastloss_c import ffi, lib
except ImportError as exc:  # not built: no compiler at install, FASTLOSS_NO_C=1, ...
    ffi = lib = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

NAME = "c"
#: must equal FL_ABI_VERSION of csrc/fastloss.h
ABI_VERSION = 1

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_CTYPE = {"f32": "float *", "f64": "double *"}


def check_available():
    """Raise ImportError when the extension was not built (or is stale)."""
    if lib is None:
        raise ImportError(
            "the C extension fastloss._fastloss_c is not built (reinstall with a C compiler and "
            f"without FASTLOSS_NO_C, or run `python setup.py build_ext --inplace`): {_IMPORT_ERROR}")
    if lib.fl_abi_version() != ABI_VERSION:
        raise ImportError(f"fastloss._fastloss_c has ABI {lib.fl_abi_version()}, expected {ABI_VERSION}: rebuild it")


def set_num_threads(n):
    """Use ``n`` threads for large inputs (``n <= 0``: the default); returns the previous setting."""
    check_available()
    return lib.fl_set_num_threads(int(n))


def get_num_threads():
    """Threads a large call uses now."""
    check_available()
    return lib.fl_get_num_threads()


def isa():
    """Instruction set of the kernels in use: ``"avx512"``, ``"avx2"`` or ``"base"``."""
    check_available()
    return {4: "avx512", 3: "avx2"}.get(lib.fl_isa_level(), "base")


def _ptr(a, ctype):
    """A C pointer to ``a``'s data (no copy), or NULL for None."""
    if a is None:
        return ffi.NULL
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=False))


def _wptr(a, ctype):
    if a is None:
        return ffi.NULL
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=True))


def elementwise(op, z, y, w, pw, grad, loss, scale):
    sfx = _SUFFIX[z.dtype]
    ct = _CTYPE[sfx]
    n = z.size
    args = [_ptr(z, ct), _ptr(y, ct), _ptr(w, ct), 1 if w is None else w.size]
    if op == "sigmoid_bce":
        args += [_ptr(pw, ct), 1 if pw is None else pw.size]
    elif op not in ("mse", "sigmoid_mse"):
        raise ValueError(f"unknown elementwise op {op!r}")
    args += [_wptr(grad, ct), _wptr(loss, ct), n, float(scale)]
    return getattr(lib, f"fl_{op}_{sfx}")(*args)


def softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale):
    R, C = z.shape
    sfx = _SUFFIX[z.dtype]
    ct = _CTYPE[sfx]
    args = [_ptr(z, ct), R, C, _ptr(labels, "int64_t *"), _ptr(probs, ct), _ptr(w, ct), int(ignore_index)]
    if op == "softmax_cross_entropy":
        args.append(float(smoothing))
    elif op != "softmax_mse":
        raise ValueError(f"unknown softmax op {op!r}")
    args += [_wptr(grad, ct), _wptr(loss, "double *"), float(scale)]
    getattr(lib, f"fl_{op}_{sfx}")(*args)
