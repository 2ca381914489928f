"""``device_call``: the public API on CUDA arrays, with no host round trip.

Inputs with ``__cuda_array_interface__`` (CuPy, PyTorch, Numba) are wrapped
zero-copy; host (NumPy) targets/weights mixed in are copied to the device.
Shapes and dtypes are checked on the host (metadata only); integer labels
are range-checked on the device (one index comes back).  Results come back
as the logits' kind of array where it can wrap device memory zero-copy
(PyTorch, CuPy), else as Numba device arrays.  A reduced loss ('mean',
'sum') is returned as a host NumPy scalar of the logits' dtype: computing it
already needs the (deterministic) device sum copied back.

Device inputs must be C-contiguous (no strided kernels here); float16
logits are read and written as float16 by the kernels (math in float64).
"""
from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
from numba import cuda, float64

from .. import _validate as V
from ._elementwise import OPS as ELEMENTWISE_OPS
from ._elementwise import elementwise_dev
from ._reduce import SIM, THREADS, device_sum, grid_for, to_host
from ._softmax import softmax_dev

if SIM:  # the simulator's arrays have no __cuda_array_interface__
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _Fake
else:
    _Fake = ()


def is_device_array(a):
    return isinstance(a, _Fake) or (hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray))


def _as_dev(a, name, stream=0):
    if isinstance(a, _Fake):
        return a
    if is_device_array(a):
        if type(a).__module__.split(".")[0] == "torch":
            a = a.detach()  # torch refuses __cuda_array_interface__ on tensors that require grad
        d = cuda.as_cuda_array(a)
    else:
        d = cuda.to_device(np.ascontiguousarray(a), stream=stream)  # a host operand: copied once
    if d.size and not d.is_c_contiguous():
        raise ValueError(f"{name} on the device must be C-contiguous")
    return d


def _span(d):
    """(first byte address, byte length) of a device array."""
    if isinstance(d, _Fake):
        ptr = d._ary.__array_interface__["data"][0]
    else:
        ptr = d.__cuda_array_interface__["data"][0]
    return ptr, d.size * d.dtype.itemsize


def _wrap(like, d):
    """``d`` as the same kind of array as ``like`` when zero-copy is possible."""
    kind = _kind(like)
    if kind == "torch":
        import torch

        return torch.as_tensor(d, device=like.device)
    if kind == "cupy":
        import cupy

        return cupy.asarray(d)
    return d


def _kind(a):
    return type(a).__module__.split(".")[0]


def _caller_stream(like):
    """The stream PyTorch/CuPy queue work on for ``like``, so ours is ordered with theirs."""
    ptr = 0
    if not SIM and _kind(like) == "torch":
        import torch

        ptr = torch.cuda.current_stream(like.device).cuda_stream
    elif not SIM and _kind(like) == "cupy":
        import cupy

        ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


def _on_device_of(like):
    """Run on the GPU holding ``like`` (PyTorch/CuPy); else numba's current one."""
    if not SIM and _kind(like) == "torch" and like.device.index is not None:
        return cuda.gpus[like.device.index]
    if not SIM and _kind(like) == "cupy":
        return cuda.gpus[like.device.id]
    return contextlib.nullcontext()


def _check_out(out, z, shape, rdt):
    if out is None:
        return None
    if not is_device_array(out):
        raise TypeError("out must be a CUDA array when the logits are on the device")
    d = _as_dev(out, "out")
    if d.shape != tuple(shape):
        raise ValueError(f"out must have the logits' shape {tuple(shape)}; got {d.shape}")
    if d.dtype != rdt:
        raise TypeError(f"out must have dtype {rdt} (the logits' dtype); got {d.dtype}")
    (p0, n0), (p1, n1) = _span(d), _span(z)
    if (p0, n0) != (p1, n1) and p0 < p1 + n1 and p1 < p0 + n0:
        raise ValueError("out overlaps logits without being the same array; pass out=logits or a separate buffer")
    return d


def _periodic_dev(param, shape, cdt, name, stream=0):
    """Device version of :func:`fastloss._validate.periodic_param` (no expansion)."""
    if param is None:
        return None
    if not is_device_array(param):
        return cuda.to_device(V.periodic_param(param, shape, cdt, name), stream=stream)
    p = _as_dev(param, name)
    if p.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {p.dtype}")
    try:
        full = np.broadcast_shapes(p.shape, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {p.shape} does not broadcast to the logits' shape {shape}") from None
    if full != tuple(shape):
        raise ValueError(f"{name} of shape {p.shape} would broadcast the logits' shape {shape} to a larger one")
    core = p.shape
    while core and core[0] == 1:
        core = core[1:]
    if core != tuple(shape[len(shape) - len(core):]):
        raise ValueError(f"{name} on the device must be a scalar or match trailing axes of the logits' shape "
                         f"{shape}; got {p.shape} (broadcast it first)")
    return p.reshape(max(p.size, 1))


def _elementwise(op, logits, target, weight=None, pos_weight=None, reduction="mean", return_grad=False, out=None,
                 stream=0):
    V.check_reduction(reduction)
    V.check_grad_request(return_grad, out)
    z = _as_dev(logits, "logits", stream)
    cdt, rdt = V.compute_dtype(z.dtype)
    shape = z.shape
    y = _as_dev(target, "target", stream)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"target must be a real numeric array; got dtype {y.dtype}")
    if y.shape != shape:
        raise ValueError(f"target must have the logits' shape {shape}; got {y.shape}")
    w = _periodic_dev(weight, shape, cdt, "weight", stream)
    pw = _periodic_dev(pos_weight, shape, cdt, "pos_weight", stream) if op == "sigmoid_bce" else None
    g = _check_out(out, z, shape, rdt) if return_grad else None
    n = z.size
    if return_grad and g is None:
        g = cuda.device_array(shape, dtype=rdt, stream=stream)
    if w is not None and op != "sigmoid_bce":  # torch: mse_loss divides by the broadcast weight sum
        denom = device_sum(w, stream) * (n // w.size) if n else 0.0
    else:
        denom = float(n)
    scale = (1.0 / denom if denom else 0.0) if reduction == "mean" else 1.0
    per = cuda.device_array(shape, dtype=rdt, stream=stream) if reduction == "none" else None
    flat = (lambda a: None if a is None else a.reshape(n)) if n else (lambda a: None)
    total = elementwise_dev(op, flat(z), flat(y), w, pw, flat(g), flat(per), scale, stream) if n else 0.0
    if reduction == "none":
        loss = _wrap(logits, per)
    else:
        loss = rdt.type(total if reduction == "sum" else (total / denom if denom else 0.0))
    if not return_grad:
        return loss
    return loss, (out if out is not None else _wrap(logits, g))


def label_kernel_py(use_w):
    """Python source of the label range check + per-row 'mean' denominator."""

    def check_labels(labels, C, ignore_index, w, den, bad):
        i = cuda.grid(1)
        while i < labels.size:
            y = labels[i]
            d = 0.0
            if y != ignore_index:
                if y < 0 or y >= C:
                    cuda.atomic.min(bad, 0, i)  # integer min: the first offender, deterministic
                else:
                    d = float64(w[y]) if use_w else 1.0
            den[i] = d
            i += cuda.gridsize(1)

    return check_labels


@functools.lru_cache(maxsize=None)
def _label_kernel(use_w):
    return cuda.jit(label_kernel_py(use_w))


def _labels_denominator(labels, C, ignore_index, w, batch, use_w, stream=0):
    """Range-check labels on the device; the 'mean' denominator (sum of w[y] or count)."""
    R = labels.size
    den = cuda.device_array(R, dtype=np.float64, stream=stream)
    bad = cuda.to_device(np.array([R], dtype=np.int64), stream=stream)
    wd = w if w is not None else cuda.device_array(1, dtype=np.float64, stream=stream)
    _label_kernel(use_w)[grid_for(R), THREADS, stream](labels, C, ignore_index, wd, den, bad)
    first = int(to_host(bad, stream)[0])
    if first < R:
        value = int(to_host(labels[first:first + 1], stream)[0])
        pos = tuple(int(i) for i in np.unravel_index(first, batch))
        raise ValueError(f"target has label {value} at position {pos}; labels must be in "
                         f"[0, {C}) or equal ignore_index={ignore_index}")
    return device_sum(den, stream)


def _softmax(op, logits, target, axis=-1, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean",
             return_grad=False, out=None, stream=0):
    V.check_reduction(reduction)
    V.check_grad_request(return_grad, out)
    z = _as_dev(logits, "logits", stream)
    cdt, rdt = V.compute_dtype(z.dtype)
    if z.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis)")
    shape = z.shape
    ax = V.check_axis(axis, z.ndim)
    ignore_index = V.check_ignore_index(ignore_index)
    eps = V.check_smoothing(label_smoothing) if op == "softmax_cross_entropy" else 0.0
    C = shape[ax]
    inner = math.prod(shape[ax + 1:])
    batch = shape[:ax] + shape[ax + 1:]
    R = math.prod(batch)
    t = _as_dev(target, "target", stream)
    labels = probs = None
    if t.dtype.kind in "iu":
        if t.shape != batch:
            raise ValueError(f"integer target (labels) must have the logits' shape without axis {ax}, "
                             f"{batch}; got {t.shape}")
        labels = t.reshape(R) if R else t
    elif t.dtype.kind == "f":
        if t.shape != shape:
            raise ValueError(f"probability target must have the logits' shape {shape}; got {t.shape}")
        probs = t.reshape(z.size) if z.size else t
    else:
        raise TypeError(f"target must hold integer labels or float probabilities; got dtype {t.dtype}")
    if weight is None:
        w = None
    elif is_device_array(weight):
        w = _as_dev(weight, "weight")
        if w.dtype.kind not in "biuf":
            raise TypeError(f"weight must be a real numeric array; got dtype {w.dtype}")
        if w.shape != (C,):
            raise ValueError(f"weight must have shape ({C},), one value per class; got {w.shape}")
    else:
        w = cuda.to_device(V.check_class_weight(weight, C, cdt), stream=stream)
    g = _check_out(out, z, shape, rdt) if return_grad else None
    if return_grad and g is None:
        g = cuda.device_array(shape, dtype=rdt, stream=stream)

    if labels is None:
        denom = float(R)
    elif R:
        denom = _labels_denominator(labels, C, ignore_index, w, batch, op == "softmax_cross_entropy" and w is not None,
                                    stream)
    else:
        denom = 0.0
    scale = (1.0 / denom if denom else 0.0) if reduction == "mean" else 1.0
    rows_dt = rdt if reduction == "none" else np.float64
    # rows of zero classes get no kernel launch: their loss is 0
    rows = (cuda.device_array(R, dtype=rows_dt, stream=stream) if z.size
            else cuda.to_device(np.zeros(R, dtype=rows_dt), stream=stream))
    if z.size:
        softmax_dev(op, z.reshape(z.size), labels, probs, w, ignore_index, eps,
                    None if g is None else g.reshape(z.size), rows, scale, C, inner, stream)
    if reduction == "none":
        loss = _wrap(logits, rows.reshape(batch) if R else rows)
    else:
        total = device_sum(rows, stream) if z.size else 0.0
        loss = rdt.type(total if reduction == "sum" else (total / denom if denom else 0.0))
    if not return_grad:
        return loss
    return loss, (out if out is not None else _wrap(logits, g))


def device_call(op, logits, target, **options):
    """Compute public loss ``op`` on CUDA arrays; ``options`` are its keyword arguments.

    Returns what the public function returns: the loss (a host NumPy scalar
    of the logits' dtype for 'mean'/'sum'; a device array for 'none') and,
    with ``return_grad=True``, the gradient as a device array (or ``out``).
    """
    with _on_device_of(logits):
        stream = _caller_stream(logits)
        if op in ELEMENTWISE_OPS:
            return _elementwise(op, logits, target, stream=stream, **options)
        return _softmax(op, logits, target, stream=stream, **options)
