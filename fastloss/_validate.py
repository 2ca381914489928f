"""Argument checks shared by every public function (and the CUDA front end).

Each check raises ``ValueError``/``TypeError`` naming the argument, before
any output is written.
"""
from __future__ import annotations

import operator

import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")


def check_grad_request(return_grad, out):
    if not isinstance(return_grad, (bool, np.bool_)):
        raise TypeError(f"return_grad must be a bool; got {type(return_grad).__name__}")
    if out is not None and not return_grad:
        raise ValueError("out= receives the gradient; pass return_grad=True with it")


def compute_dtype(dtype, name="logits"):
    """(compute dtype, result dtype) for a logits dtype.

    float32/float64 run natively; float16 is computed in float32 and rounded
    back; anything else (integers, bool, complex, longdouble) is a TypeError:
    a loss over integer logits is almost always a bug, not a request for
    float64 promotion.
    """
    try:  # the common case in one dict lookup (comparing a dtype to a type costs ~0.1 us)
        hit = _COMPUTE.get(dtype)
    except TypeError:  # unhashable spec, e.g. a structured dtype's field list
        hit = None
    if hit is not None:
        return hit
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype, dtype
    if dtype == np.float16:
        return np.dtype(np.float32), dtype
    raise TypeError(f"{name} must be a float16, float32 or float64 array; got dtype {dtype}")


_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_COMPUTE = {_F32: (_F32, _F32), _F64: (_F64, _F64), _F16: (_F32, _F16)}


def as_float_target(target, shape, dtype, name="target"):
    """A target (or weight-like) array of exactly ``shape``, cast to ``dtype``."""
    t = np.asarray(target)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {t.dtype}")
    if t.shape != shape:
        raise ValueError(f"{name} must have the logits' shape {shape}; got {t.shape}")
    return t if t.dtype == dtype else t.astype(dtype, copy=False)


def periodic_param(param, shape, dtype, name):
    """Broadcast an elementwise parameter (weight, pos_weight) against ``shape``.

    Returns a 1-D C-contiguous array ``p`` of length P, n % P == 0, such that
    flat element ``i`` (C order) uses ``p[i % P]``: a parameter that only
    varies along trailing axes (per-class ``(C,)`` or a scalar) is never
    expanded to the input's size.  Other broadcasts are materialised.
    """
    if param is None:
        return None
    p = np.asarray(param)
    if p.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {p.dtype}")
    try:
        np.broadcast_shapes(p.shape, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {p.shape} does not broadcast to the logits' shape {shape}") from None
    if np.broadcast_shapes(p.shape, shape) != tuple(shape):
        raise ValueError(f"{name} of shape {p.shape} would broadcast the logits' shape {shape} to a larger one")
    core = p.shape
    while core and core[0] == 1:  # leading ones do not change the period
        core = core[1:]
    if core == tuple(shape[len(shape) - len(core):]):
        flat = np.ascontiguousarray(p, dtype=dtype).reshape(-1)
        if flat.size == 0 and int(np.prod(shape)) != 0:  # pragma: no cover - excluded by broadcasting
            raise ValueError(f"{name} is empty")
        return flat if flat.size else np.ones(1, dtype=dtype)
    return np.ascontiguousarray(np.broadcast_to(p, shape), dtype=dtype).reshape(-1)


def check_axis(axis, ndim):
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an int; got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for logits with {ndim} dimension(s)")
    return axis % ndim


def check_smoothing(label_smoothing):
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a float; got {type(label_smoothing).__name__}") from None
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
    return eps


def check_ignore_index(ignore_index):
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int; got {type(ignore_index).__name__}") from None


#: native signed label dtype -> (unsigned dtype of its size, 2**(bits-1))
_UNSIGNED = {np.dtype(s): (np.dtype(u), 1 << (8 * np.dtype(s).itemsize - 1))
             for s, u in ((np.int8, np.uint8), (np.int16, np.uint16), (np.int32, np.uint32), (np.int64, np.uint64))}


def check_labels(labels, n_classes, ignore_index):
    """Raise naming the first label outside [0, C) that is not ignore_index.

    Returns True when every label is in [0, C) (so none equals an
    ``ignore_index`` outside that range), False when some are ignored.
    """
    if labels.size == 0:
        return True
    # The common case in one pass: viewed as unsigned, a negative label is
    # >= 2**(bits-1), so it fails "< C" whenever C <= 2**(bits-1).  The max
    # is taken as a[argmax]: argmax skips the ufunc machinery (~0.6 us less).
    u = _UNSIGNED.get(labels.dtype)
    if u is not None and n_classes <= u[1]:
        v = labels.view(u[0])
        if v.item(v.argmax()) < n_classes:
            return True
    elif labels.dtype.kind == "u":
        if labels.item(labels.argmax()) < n_classes:
            return True
    elif labels.min() >= 0 and labels.max() < n_classes:
        return True
    bad = ((labels < 0) | (labels >= n_classes)) & (labels != ignore_index)
    if bad.any():
        first = int(np.argmax(bad.reshape(-1)))
        pos = np.unravel_index(first, labels.shape)
        value = labels.reshape(-1)[first]
        raise ValueError(
            f"target has label {value} at position {tuple(int(i) for i in pos)}; labels must be in "
            f"[0, {n_classes}) or equal ignore_index={ignore_index}"
        )
    return False


def check_class_weight(weight, n_classes, dtype):
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"weight must be a real numeric array; got dtype {w.dtype}")
    if w.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), one value per class; got {w.shape}")
    return np.ascontiguousarray(w, dtype=dtype)


# np.may_share_memory's C function itself: the __array_function__ dispatch
# around it costs ~0.2 us a call, and only ndarrays reach it here
_may_share = getattr(np.may_share_memory, "_implementation", np.may_share_memory)


def may_overlap(a, b):
    """Whether ndarrays ``a`` and ``b`` may share memory (a bounds test).

    Two different arrays that each own their memory are two allocations:
    that is answered from the flags (~0.15 us) without the bounds test.
    """
    if a.flags.owndata and b.flags.owndata:
        return a is b
    return _may_share(a, b)


def check_out(out, shape, dtype, logits, *others):
    """Validate ``out=``: right shape and dtype, writeable, not overlapping inputs.

    ``out`` may be the logits array itself (in-place gradient); it may not
    partially overlap it or overlap any of ``others`` (targets, weights).
    """
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray; got {type(out).__name__}")
    if out.shape != shape:  # (shape is a tuple: every caller passes an array's shape)
        raise ValueError(f"out must have the logits' shape {tuple(shape)}; got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype} (the logits' dtype); got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if out is not logits and isinstance(logits, np.ndarray) and may_overlap(out, logits):
        same = (  # (out is logits: trivially the same; __array_interface__ costs ~1 us)
            out.__array_interface__["data"][0] == logits.__array_interface__["data"][0]
            and out.strides == logits.strides
        )
        if not same:
            raise ValueError("out overlaps logits without being the same array; pass out=logits or a separate buffer")
    for arr in others:
        if arr is not None and isinstance(arr, np.ndarray) and may_overlap(out, arr):
            raise ValueError("out shares memory with target/weight; it may only alias the logits")
    return out
