"""The ``"numba"`` backend: fused, parallel, vectorised CPU kernels.

Implements the backend kernel interface of :mod:`fastloss.reference`.
Kernels live in :mod:`._elementwise` and :mod:`._softmax` (plain loops), the
scalar math they share in :mod:`._math`, compile/threading machinery in
:mod:`._jit`.  Options travel as runtime scalars and absent arrays as empty
arrays, so one compiled signature per (op, dtype) serves every option.

Process-level behaviour (see :mod:`._jit`): kernels are cached on disk,
keyed on every source file of this package, with in-memory JIT when no cache
location is writable; unless the user chose a numba threading layer, a
fork-safe one is selected ('tbb' if installed, else 'workqueue'), and calls
are serialised by a lock when the active layer is not thread-safe.  The
reduced loss is bitwise identical for any thread count.
"""
from __future__ import annotations

import numpy as np

from .._validate import may_overlap
from . import _jit
from . import _elementwise as _ew
from . import _softmax as _sm

NAME = "numba"

_SM_OPS = {"softmax_cross_entropy": _sm.CE, "softmax_mse": _sm.SMSE}
#: Up to these sizes the calling thread works alone: waking numba's pool
#: costs ~30 us on a quiet machine, but on this 2-vCPU VM the second
#: thread often starts hundreds of us late.  Serial vs parallel kernel,
#: float32, medians of 30 calls, two runs: sigmoid_mse 2^16 148 vs 181-236
#: us, 2^17 296-301 vs 341-346, 2^18 596-599 vs 694-697; sigmoid_bce 2^16
#: 211-221 vs 242-305, 2^17 428 vs 474-627, 2^18 874-1146 vs 895-1254,
#: 2^19 1.8-2.7 vs 1.2-1.9 ms (the parallel best times win from 2^17,
#: the medians only from 2^19).  mse -- memory-bound, cheap per element --
#: gains nothing before 2**20, cross-entropy near 2**17.
SERIAL_ELEMENTS = {"mse": 1 << 20, "sigmoid_mse": 1 << 17, "sigmoid_bce": 1 << 17}
SERIAL_SOFTMAX = 1 << 17
# float32 gradient rows hold exp(z - m) * 2**100: an e below float32's normal
# range stays exact until the final rescale (2**100 * 1 cannot overflow).
_ESC = {np.dtype(np.float32): 2.0 ** 100, np.dtype(np.float64): 1.0}
# per-dtype empty stand-ins for absent arrays (float32/float64 made up front)
_EMPTY1 = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}
_EMPTY2 = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}


def _e1(dt):
    a = _EMPTY1.get(dt)
    if a is None:
        a = _EMPTY1[dt] = np.empty(0, dt)
    return a


def _e2(dt):
    a = _EMPTY2.get(dt)
    if a is None:
        a = _EMPTY2[dt] = np.empty((0, 0), dt)
    return a


_NO_LABELS = np.empty(0, np.int64)


def check_available():
    """Raise if numba cannot compile and run here (smallest real call)."""
    z = np.zeros(1)
    elementwise("mse", z, z, None, None, None, None, 1.0)


def elementwise(op, z, y, w, pw, grad, loss, scale):
    """Fused elementwise loss; see :mod:`fastloss.reference` for the contract."""
    e = _EMPTY1.get(z.dtype)
    if e is None:
        e = _e1(z.dtype)
    n = z.size
    nchunks = -(-n // _ew.CHUNK)
    # float32 plain kernels may re-read z and y after writing the gradient (a
    # block whose float32 loss sum overflowed): only for a gradient not over them
    plain = (w is None and pw is None and grad is not None and loss is None
             and (z.dtype != np.float32
                  or not (may_overlap(grad, z) or may_overlap(grad, y))))
    serial, parallel = _ew.KERNELS[op][plain]
    w = e if w is None else w
    pw = e if pw is None else pw
    grad = e if grad is None else grad
    loss = e if loss is None else loss
    if n <= SERIAL_ELEMENTS[op]:
        return serial(z, y, w, pw, grad, loss, float(scale), nchunks)
    partial = np.empty(nchunks)
    with _jit.run_lock():
        parallel(z, y, w, pw, grad, loss, float(scale), partial)
    total = 0.0
    for v in partial.tolist():  # chunk order, as the serial kernel: same bits
        total += v
    return total


def softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale):
    """Fused softmax-row loss; see :mod:`fastloss.reference` for the contract."""
    dt = z.dtype
    if (z.shape[1] <= _sm.SMALL_C and labels is not None and probs is None and w is None
            and smoothing == 0.0):
        # short rows, the plain call: vectorised across rows
        args = (_SM_OPS[op], z, labels, int(ignore_index), _e2(dt) if grad is None else grad, loss,
                float(scale), _ESC[dt])
        if z.size <= SERIAL_SOFTMAX:
            return _sm.small_serial(*args)
        with _jit.run_lock():
            return _sm.small_parallel(*args)
    args = (_SM_OPS[op], z, _NO_LABELS if labels is None else labels,
            _e2(dt) if probs is None else probs, _e1(dt) if w is None else w,
            int(ignore_index), float(smoothing), _e2(dt) if grad is None else grad,
            loss, float(scale), _ESC[dt])
    if z.size <= SERIAL_SOFTMAX or z.shape[0] == 1:
        return _sm.softmax_serial(*args)
    with _jit.run_lock():
        return _sm.softmax_parallel(*args)
