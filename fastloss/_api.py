"""Public loss functions: validate once, lay out, dispatch, reduce.

Layers (as in every backend): public function -> ``_elementwise`` /
``_softmax`` (validation, layout, allocation, reduction) -> backend kernel
writing into the buffers given to it.
"""
from __future__ import annotations

import math

import numpy as np

from . import _backends
from . import _validate as V


def _is_device_array(*arrays):
    for a in arrays:  # a loop, not any(genexpr): this runs on every call
        if a is None or type(a) is np.ndarray:
            continue
        if not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__"):
            return True
    return False


def _flat(a, dtype):
    """``a`` as a 1-D C-contiguous array of ``dtype`` (``a`` itself when it is one)."""
    if a.ndim == 1 and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def _device_call(op, backend, *args, **kwargs):
    if backend not in (None, "cuda"):
        raise ValueError(f"device (CUDA) arrays need backend='cuda' or None; got backend={backend!r}")
    return _backends.load("cuda").device_call(op, *args, **kwargs)


def _grad_buffer(out, shape, cdt):
    """A C-contiguous gradient buffer: ``out`` itself when its layout allows."""
    if out is not None and out.dtype == cdt and out.flags.c_contiguous:
        return out
    return np.empty(shape, dtype=cdt)


def _cast(x, rdt):
    """Round results to the result dtype; overflow to inf there is the right
    answer (float16 losses, float32 sums), not a warning."""
    if x.dtype == rdt:
        return x
    with np.errstate(over="ignore"):
        return x.astype(rdt)


def _finish_grad(g, out, rdt):
    """Deliver the kernel's gradient buffer ``g`` as the result (into ``out``)."""
    if out is None:
        return _cast(g, rdt)
    if g is not out:  # a temporary: out had another layout or dtype
        with np.errstate(over="ignore"):
            np.copyto(out, g, casting="unsafe")
    return out


#: largest finite value of each result dtype: a total no larger in magnitude
#: rounds without overflow, so it needs no np.errstate (~1 us to enter)
_FINITE_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def _reduced(total, denominator, reduction, rdt):
    if reduction != "sum":
        # a mean over nothing (empty input, everything ignored) is 0, not NaN
        total = total / denominator if denominator else 0.0
    if abs(total) <= _FINITE_MAX[rdt]:  # False for inf and NaN too
        return rdt.type(total)
    with np.errstate(over="ignore"):  # overflow to inf is the answer, not a warning
        return rdt.type(total)


# --------------------------------------------------------------------------
# elementwise: mse, sigmoid_mse, sigmoid_bce
# --------------------------------------------------------------------------
def _elementwise(op, logits, target, weight, pos_weight, reduction, return_grad, out, backend):
    V.check_reduction(reduction)
    V.check_grad_request(return_grad, out)
    if _is_device_array(logits, target, weight, pos_weight, out):
        return _device_call(op, backend, logits, target, weight=weight, pos_weight=pos_weight,
                            reduction=reduction, return_grad=return_grad, out=out)
    z = np.asarray(logits)
    cdt, rdt = V.compute_dtype(z.dtype)
    shape = z.shape
    y = V.as_float_target(target, shape, cdt)
    # (None checked here: a call is ~0.1 us, and most calls pass none of these)
    w = None if weight is None else V.periodic_param(weight, shape, cdt, "weight")
    pw = None
    if pos_weight is not None and op == "sigmoid_bce":
        pw = V.periodic_param(pos_weight, shape, cdt, "pos_weight")
    if out is not None:
        V.check_out(out, shape, rdt, logits, target, weight, pos_weight)
    mod = _backends.resolve(backend, op, cdt)

    n = z.size
    zf = _flat(z, cdt)
    yf = _flat(y, cdt)
    g = _grad_buffer(out, shape, cdt) if return_grad else None
    per_elem = np.empty(n, dtype=cdt) if reduction == "none" else None

    # torch semantics: mse_loss divides by the sum of the (broadcast)
    # weights, binary_cross_entropy_with_logits by the element count.
    if w is not None and op != "sigmoid_bce":
        denom = float(np.sum(w, dtype=np.float64)) * (n // w.size)
    else:
        denom = float(n)
    scale = (1.0 / denom if denom else 0.0) if reduction == "mean" else 1.0
    total = 0.0
    if n:
        total = mod.elementwise(op, zf, yf, w, pw, None if g is None else g if g.ndim == 1 else g.reshape(-1),
                                  per_elem, scale)

    if reduction == "none":
        loss = _cast(per_elem.reshape(shape), rdt)
    else:
        loss = _reduced(total, denom, reduction, rdt)
    if not return_grad:
        return loss
    return loss, _finish_grad(g, out, rdt)


_ELEMENTWISE_PARAMS = """
    target : array_like, same shape as the first argument
        Targets; bool/int/float, cast to the logits' dtype.
    weight : array_like, optional
        Elementwise weight, broadcast to the input's shape (``(C,)`` or a
        scalar is never expanded in memory). A zero weight masks exactly.
    reduction : {'mean', 'sum', 'none'}
        ``'none'`` returns one loss per element; ``'mean'`` %s; a mean over
        nothing is 0.0.
    return_grad : bool
        If True return ``(loss, grad)`` from the same fused pass, ``grad`` of
        the input's shape and dtype: d(reduced loss)/d(input), or each
        element's own derivative for ``reduction='none'``.
    out : ndarray, optional
        Receives the gradient (needs ``return_grad=True``); may be the input
        array itself for an in-place gradient.
    backend : {None, 'numba', 'c', 'cuda', 'numpy'}
        ``None`` chooses automatically (``FASTLOSS_BACKEND`` sets a default).
"""

_MEAN_BY_WEIGHT = "divides by the sum of the broadcast weights (by n without weight), as torch.nn.functional.mse_loss"


def mse(pred, target, /, *, weight=None, reduction="mean", return_grad=False, out=None, backend=None):
    return _elementwise("mse", pred, target, weight, None, reduction, return_grad, out, backend)


def sigmoid_mse(logits, target, /, *, weight=None, reduction="mean", return_grad=False, out=None, backend=None):
    return _elementwise("sigmoid_mse", logits, target, weight, None, reduction, return_grad, out, backend)


def sigmoid_bce(logits, target, /, *, weight=None, pos_weight=None, reduction="mean", return_grad=False,
                out=None, backend=None):
    return _elementwise("sigmoid_bce", logits, target, weight, pos_weight, reduction, return_grad, out, backend)


mse.__doc__ = r"""Mean squared error with its gradient, fused.

.. math::  \ell_i = w_i (x_i - y_i)^2, \qquad
           \partial \ell_i / \partial x_i = 2 w_i (x_i - y_i)

Parameters
----------
pred : array_like, any shape, float16/32/64
    Predictions (identity output).""" + _ELEMENTWISE_PARAMS % _MEAN_BY_WEIGHT + r"""
Returns
-------
loss : scalar of the input's dtype, or array of its shape for ``'none'``
grad : ndarray, only with ``return_grad=True``

Examples
--------
>>> import numpy as np, fastloss
>>> loss, grad = fastloss.mse(np.array([1.0, 3.0]), np.array([0.0, 1.0]), return_grad=True)
>>> float(loss), grad.tolist()
(2.5, [1.0, 2.0])
"""

sigmoid_mse.__doc__ = r"""Sigmoid output + mean squared error, with its gradient, fused.

.. math::  s_i = \sigma(z_i),\quad \ell_i = w_i (s_i - y_i)^2, \quad
           \partial \ell_i/\partial z_i = 2 w_i (s_i - y_i)\, s_i (1 - s_i)

The saturating factor :math:`s(1-s)` is computed as
:math:`\sigma(z)\sigma(-z)`, never as ``1 - s``, so the gradient stays a
correct (tiny) normal number deep into the tails where peers return 0.

Parameters
----------
logits : array_like, any shape, float16/32/64""" + _ELEMENTWISE_PARAMS % _MEAN_BY_WEIGHT + r"""
Returns
-------
loss : scalar of the logits' dtype, or array of their shape for ``'none'``
grad : ndarray, only with ``return_grad=True``

Examples
--------
>>> import numpy as np, fastloss
>>> loss, grad = fastloss.sigmoid_mse(np.array([0.0, 40.0]), np.array([1.0, 0.0]),
...                                   reduction="none", return_grad=True)
>>> loss.tolist()
[0.25, 1.0]
>>> grad[1] > 0  # 2 (1 - 0) e^-40: tiny but not rounded to zero
np.True_
"""

sigmoid_bce.__doc__ = r"""Binary cross-entropy on logits (sigmoid fused in), with its gradient.

.. math::  \ell_i = w_i\,[\,p_i y_i\,\mathrm{softplus}(-z_i)
                   + (1 - y_i)\,\mathrm{softplus}(z_i)\,], \qquad
           \partial \ell_i/\partial z_i = w_i\,[(1-y_i)\sigma(z_i) - p_i y_i \sigma(-z_i)]

(:math:`p` is ``pos_weight``; with :math:`p = 1` the gradient is
:math:`\sigma(z) - y`.) Exact limits at :math:`z = \pm\infty`, no NaN.

Parameters
----------
logits : array_like, any shape, float16/32/64""" + _ELEMENTWISE_PARAMS % "divides by the element count, as torch.nn.functional.binary_cross_entropy_with_logits" + r"""    pos_weight : array_like, optional
        Weight of the positive term, broadcast to the input's shape
        (typically one value per class along the last axis).

Returns
-------
loss : scalar of the logits' dtype, or array of their shape for ``'none'``
grad : ndarray, only with ``return_grad=True``

Examples
--------
>>> import numpy as np, fastloss
>>> z = np.array([0.0, np.inf, -20.0], dtype=np.float32)
>>> loss = fastloss.sigmoid_bce(z, np.array([1, 1, 0]), reduction="none")
>>> loss[0] == np.float32(np.log(2)), loss[1], loss[2] > 0
(np.True_, np.float32(0.0), np.True_)
"""


# --------------------------------------------------------------------------
# softmax: softmax_cross_entropy, softmax_mse
# --------------------------------------------------------------------------
_INT64 = np.dtype(np.int64)


def _rows2d(a, dtype, R, C):
    """``a`` as a C-contiguous (R, C) array of ``dtype`` (``a`` itself when it is one)."""
    if a.ndim == 2 and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype).reshape(R, C)


def _softmax(op, logits, target, axis, weight, ignore_index, smoothing, reduction, return_grad, out, backend):
    V.check_reduction(reduction)
    V.check_grad_request(return_grad, out)
    if _is_device_array(logits, target, weight, out):
        return _device_call(op, backend, logits, target, axis=axis, weight=weight, ignore_index=ignore_index,
                            label_smoothing=smoothing, reduction=reduction, return_grad=return_grad, out=out)
    z = np.asarray(logits)
    cdt, rdt = V.compute_dtype(z.dtype)
    if z.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis)")
    ax = V.check_axis(axis, z.ndim)
    ignore_index = V.check_ignore_index(ignore_index)
    smoothing = V.check_smoothing(smoothing)
    C = z.shape[ax]
    last = ax == z.ndim - 1
    zm = z if last else np.moveaxis(z, ax, -1)
    batch = zm.shape[:-1]
    R = math.prod(batch)

    t = np.asarray(target)
    labels = probs = None
    if t.dtype.kind in "iu":
        if t.shape != batch:
            raise ValueError(f"integer target (labels) must have the logits' shape without axis {ax}, "
                             f"{batch}; got {t.shape}")
        in_range = V.check_labels(t, C, ignore_index)
        labels = _flat(t, _INT64)
    elif t.dtype.kind == "f":
        if t.shape != z.shape:
            raise ValueError(f"probability target must have the logits' shape {z.shape}; got {t.shape}")
        probs = _rows2d(t if last else np.moveaxis(t, ax, -1), cdt, R, C)
    else:
        raise TypeError(f"target must hold integer labels or float probabilities; got dtype {t.dtype}")
    w = None if weight is None else V.check_class_weight(weight, C, cdt)
    if out is not None:
        V.check_out(out, z.shape, rdt, logits, target, weight)
    mod = _backends.resolve(backend, op, cdt)

    # denominator of 'mean' (torch semantics; 0 when nothing counts)
    denom = float(R)
    if labels is not None and reduction == "mean":
        # every label in [0, C) and ignore_index outside it: none is ignored
        # (the same elements in the same order as the mask would select)
        valid = labels if in_range and not 0 <= ignore_index < C else labels[labels != ignore_index]
        if op == "softmax_cross_entropy" and w is not None:
            denom = float(np.sum(w[valid], dtype=np.float64))
        else:
            denom = float(valid.size)
    scale = (1.0 / denom if denom else 0.0) if reduction == "mean" else 1.0

    z2 = _rows2d(zm, cdt, R, C)
    g = None
    if return_grad:
        outm = out if out is None or last else np.moveaxis(out, ax, -1)
        g = _grad_buffer(outm, zm.shape, cdt)
    rows = np.zeros(R, dtype=np.float64)
    total = 0.0
    if z.size:  # the kernel returns the sum of the rows, in its own fixed order
        total = mod.softmax_rows(op, z2, labels, probs, w, ignore_index, smoothing,
                                 None if g is None else g if g.ndim == 2 else g.reshape(R, C), rows, scale)

    if reduction == "none":
        loss = _cast(rows.reshape(batch), rdt)
    else:
        loss = _reduced(total, denom, reduction, rdt)
    if not return_grad:
        return loss
    grad = _finish_grad(g, outm, rdt)
    return loss, (grad if out is not None or last else np.moveaxis(grad, -1, ax))


def softmax_cross_entropy(logits, target, /, *, axis=-1, weight=None, ignore_index=-100, label_smoothing=0.0,
                          reduction="mean", return_grad=False, out=None, backend=None):
    r"""Softmax + categorical cross-entropy, with its gradient, fused.

    For each row :math:`z` along ``axis`` with target distribution :math:`t`
    (one-hot for integer labels; :math:`(1-\varepsilon)t + \varepsilon/C`
    with label smoothing) and class weights :math:`w`:

    .. math::  a_k = w_k t_k,\quad \ell = -\sum_k a_k \log p_k, \quad
               \partial \ell / \partial z_k = p_k \textstyle\sum_j a_j - a_k,
               \quad p = \mathrm{softmax}(z)

    computed as :math:`\ell = A\,\mathrm{log1p}(S') - \sum_k a_k (z_k - m)`
    (:math:`m` the row max, :math:`S'` the sum of :math:`e^{z_k - m}` over
    all but the argmax): both terms are non-negative, so a dominant label
    keeps its tiny loss and its gradient :math:`p - 1` exactly. Invariant to a
    common offset of the row (``c + [1, 0, 0]`` with ``c = 1e7``).

    Parameters
    ----------
    logits : array_like, float16/32/64, at least 1-D
        Class axis ``axis``; every other axis is a batch axis.
    target : array_like
        Integer labels of the logits' shape without ``axis``, or float class
        probabilities of the logits' shape.
    axis : int
        The class axis (default last; PyTorch's layout is ``axis=1``).
    weight : array_like, shape (C,), optional
        Per-class weights.
    ignore_index : int
        Label value whose rows contribute no loss and no gradient.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution; respects
        ``ignore_index`` and ``weight`` together.
    reduction : {'mean', 'sum', 'none'}
        ``'none'``: one loss per row (batch shape). ``'mean'`` divides by the
        summed weight of the non-ignored labels (labels) or by the number of
        rows (probabilities), as PyTorch; a mean over nothing is 0.0.
    return_grad, out, backend
        As in :func:`sigmoid_bce`.

    Notes
    -----
    ``-inf`` logits are masked classes. A row that is entirely ``-inf`` has no
    distribution: it gets loss 0 and gradient 0 like an ignored row (it still
    counts in the ``'mean'`` denominator). A row holding ``+inf`` takes the
    limit (equal mass on its ``+inf`` entries). NaN anywhere in a row gives
    that row a NaN loss and gradient, without an exception.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> z = np.array([[1e7 + 1, 1e7, 1e7]], dtype=np.float32)  # shifted row
    >>> loss, grad = fastloss.softmax_cross_entropy(z, np.array([0]), return_grad=True)
    >>> round(float(loss), 6)  # log(1 + 2/e)
    0.551445
    >>> print(grad.round(6))  # p - onehot, rows sum to 0
    [[-0.423883  0.211942  0.211942]]
    """
    return _softmax("softmax_cross_entropy", logits, target, axis, weight, ignore_index, label_smoothing,
                    reduction, return_grad, out, backend)


def softmax_mse(logits, target, /, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                return_grad=False, out=None, backend=None):
    r"""Softmax output + squared error to the target distribution, fused.

    .. math::  \ell = \sum_k w_k (p_k - t_k)^2, \qquad
               \partial \ell/\partial z_j = 2 p_j \big(w_j d_j - \textstyle\sum_k w_k d_k p_k\big),
               \quad d = p - t

    The bracket cancels where a heavy class sits at or just below the row max
    :math:`m`.  Classes with :math:`z_k - m \ge -\tfrac12\ln 2` are written
    :math:`p_k = p_{\max}(1 + \operatorname{expm1}(z_k - m))`, so their
    differences keep their digits, and :math:`1 - p_k` is formed from the other
    classes: rows with a dominant logit, ties, or near ties keep a correct
    gradient.

    Parameters
    ----------
    logits, target, axis, weight, ignore_index
        As in :func:`softmax_cross_entropy` (integer labels mean one-hot).
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` averages the rows that are not ignored.
    return_grad, out, backend
        As in :func:`sigmoid_bce`.

    Examples
    --------
    >>> import numpy as np, fastloss
    >>> float(fastloss.softmax_mse(np.zeros((1, 2)), np.array([0])))  # (0.5-1)^2 + 0.5^2
    0.5
    """
    return _softmax("softmax_mse", logits, target, axis, weight, ignore_index, 0.0,
                    reduction, return_grad, out, backend)
