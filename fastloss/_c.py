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
ABI_VERSION = 2

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
# cffi array types: ffi.from_buffer(ctype, a) is a pointer argument by
# itself, one call instead of from_buffer + cast (~0.3 us per array); the
# type objects, not their names: a name is looked up on every call (~0.03 us)
_CARRAY = {} if ffi is None else {"f32": ffi.typeof("float[]"), "f64": ffi.typeof("double[]")}
_I64 = None if ffi is None else ffi.typeof("int64_t[]")
_F64 = _CARRAY.get("f64")  # the row-loss buffer's type
_ELEMENTWISE_OPS = ("mse", "sigmoid_mse", "sigmoid_bce")
_SOFTMAX_OPS = ("softmax_cross_entropy", "softmax_mse")
#: per family: op -> dtype -> (C function, cffi array type), filled on first use
_EW_FNS = {op: {} for op in _ELEMENTWISE_OPS}
_SM_FNS = {op: {} for op in _SOFTMAX_OPS}


def _lookup(table, op, dtype, family):
    if op not in table:
        raise ValueError(f"unknown {family} op {op!r}")
    sfx = _SUFFIX[dtype]
    hit = table[op][dtype] = (getattr(lib, f"fl_{op}_{sfx}"), _CARRAY[sfx])
    return hit


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


def elementwise(op, z, y, w, pw, grad, loss, scale):
    try:
        fn, ct = _EW_FNS[op][z.dtype]
    except KeyError:
        fn, ct = _lookup(_EW_FNS, op, z.dtype, "elementwise")
    fb = ffi.from_buffer
    wp = ffi.NULL if w is None else fb(ct, w)
    gp = ffi.NULL if grad is None else fb(ct, grad, True)  # True: require_writable
    lp = ffi.NULL if loss is None else fb(ct, loss, True)
    P = 1 if w is None else w.size
    if op == "sigmoid_bce":
        pwp = ffi.NULL if pw is None else fb(ct, pw)
        return fn(fb(ct, z), fb(ct, y), wp, P, pwp, 1 if pw is None else pw.size, gp, lp, z.size, float(scale))
    return fn(fb(ct, z), fb(ct, y), wp, P, gp, lp, z.size, float(scale))


def softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale):
    try:
        fn, ct = _SM_FNS[op][z.dtype]
    except KeyError:
        fn, ct = _lookup(_SM_FNS, op, z.dtype, "softmax")
    R, C = z.shape
    fb = ffi.from_buffer
    null = ffi.NULL
    lp = null if labels is None else fb(_I64, labels)
    pp = null if probs is None else fb(ct, probs)
    wp = null if w is None else fb(ct, w)
    gp = null if grad is None else fb(ct, grad, True)
    # one call with the arguments spelled out (no argument tuples to build)
    if op == "softmax_cross_entropy":
        return fn(fb(ct, z), R, C, lp, pp, wp, int(ignore_index), float(smoothing), gp,
                  fb(_F64, loss, True), float(scale))
    return fn(fb(ct, z), R, C, lp, pp, wp, int(ignore_index), gp, fb(_F64, loss, True), float(scale))
