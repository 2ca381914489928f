"""Plain-NumPy reference kernels: the single source of numerical truth.

Every backend is tested against these functions, and these functions are
tested against a 60-digit mpmath oracle (``tests/test_oracle.py``).  They are
also the ``"numpy"`` backend, so they implement the backend kernel interface
(see :mod:`fastloss._backends`):

``elementwise(op, z, y, w, pw, grad, loss, scale) -> float``
    ``z``, ``y``: 1-D C-contiguous arrays, same float dtype, ``n`` elements.
    ``w``, ``pw``: 1-D arrays of that dtype of length ``P`` with ``n % P == 0``
    (element ``i`` uses ``w[i % P]``), or ``None``.  ``grad``/``loss``: 1-D
    arrays of ``n`` elements of that dtype to fill, or ``None``.  ``grad`` is
    ``scale`` times the derivative of each element's (weighted) loss.
    Returns the float64 sum of the weighted per-element losses.

``softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale)``
    ``z``: (R, C) C-contiguous float.  Exactly one of ``labels`` ((R,) int64)
    and ``probs`` ((R, C), z's dtype) is given.  ``w``: (C,) or ``None``.
    ``loss``: (R,) float64, always filled with the per-row weighted loss.
    ``grad``: (R, C) of z's dtype or ``None``; ``scale`` times the row's
    own derivative.  ``grad`` may be ``z`` itself (in-place).

All arithmetic is float64 (float32 inputs are widened, computed and rounded
once), with the formulas chosen so no intermediate cancels, overflows or
underflows where the true result is a normal number.
"""
from __future__ import annotations

import numpy as np

NAME = "numpy"

ELEMENTWISE_OPS = ("mse", "sigmoid_mse", "sigmoid_bce")
SOFTMAX_OPS = ("softmax_cross_entropy", "softmax_mse")


# --------------------------------------------------------------------------
# scalar-math building blocks (vectorised)
# --------------------------------------------------------------------------
def sigmoid_pair(z):
    """Return ``(sigmoid(z), sigmoid(-z))``, each to ~1 ulp.

    ``sigmoid(-z)`` is never formed as ``1 - sigmoid(z)``: that difference
    rounds to 0 for z > 17 (float32) / 37 (float64) and zeroes the saturating
    factor ``s(1 - s)`` of sigmoid+MSE.
    """
    e = np.exp(-np.abs(z))  # in [0, 1]: cannot overflow
    big = 1.0 / (1.0 + e)
    small = e * big  # e/(1+e), subnormal when e is: kept, not flushed
    pos = z >= 0
    return np.where(pos, big, small), np.where(pos, small, big)


def softplus(z):
    """``log(1 + exp(z))`` without overflow, exact tail ``log1p`` for z << 0."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _periodic(a, n):
    """Expand a length-P parameter (P divides n) to n float64 values."""
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    return a if a.size == n else np.tile(a, n // a.size)


def _mul0(coef, value):
    """``coef * value`` with ``0 * inf := 0`` (a zero weight/target masks)."""
    with np.errstate(invalid="ignore"):
        return np.where(coef != 0, coef * value, 0.0)


# --------------------------------------------------------------------------
# elementwise ops
# --------------------------------------------------------------------------
def elementwise(op, z, y, w, pw, grad, loss, scale):
    n = z.size
    zf = z.astype(np.float64)
    yf = y.astype(np.float64)
    wf = _periodic(w, n)
    c = 2.0 * scale  # MSE factor 2 folded into the scale (<= 2: no overflow)
    with np.errstate(over="ignore", under="ignore"):
        if op == "mse":
            d = zf - yf
            l = d * d
            g = c * d
        elif op == "sigmoid_mse":
            s, sn = sigmoid_pair(zf)
            # s - y: for z >= 0 use (1 - y) - sigmoid(-z); (1 - y) is exact
            # for y in [0.5, 2], so y = 1 keeps every digit of sigmoid(-z).
            r = np.where(zf >= 0, (1.0 - yf) - sn, s - yf)
            l = r * r
            # s*sn multiplied last: the tiny factor goes in after the O(1) ones
            # so no intermediate underflows ahead of the final product.
            g = ((c * r) * s) * sn
        elif op == "sigmoid_bce":
            s, sn = sigmoid_pair(zf)
            a = yf if pw is None else _periodic(pw, n) * yf
            b = 1.0 - yf
            # loss = a*softplus(-z) + b*softplus(z): both terms >= 0, no
            # cancellation; zero coefficients mask infinite softplus values.
            l = _mul0(a, softplus(-zf)) + _mul0(b, softplus(zf))
            # d/dz = b*s - a*sn; equals s - y for pw = 1 but keeps y = 1 -> -sn
            # and y = 0 -> s exact, and has exact limits at z = +-inf.
            g = scale * (b * s - a * sn)
        else:  # pragma: no cover - dispatch validates op names
            raise ValueError(f"unknown elementwise op {op!r}")
        if wf is not None:
            l = _mul0(wf, l)
            g = _mul0(wf, g)
    if grad is not None:
        grad[...] = g
    if loss is not None:
        loss[...] = l
    return float(np.sum(l))


# --------------------------------------------------------------------------
# softmax ops
# --------------------------------------------------------------------------
def _target_matrix(labels, probs, w, ignore_index, smoothing, R, C):
    """Target distributions t (R, C), class weights and the rows taking part."""
    wf = np.ones(C) if w is None else np.asarray(w, dtype=np.float64)
    if labels is not None:
        valid = labels != ignore_index
        t = np.zeros((R, C))
        rows = np.nonzero(valid)[0]
        t[rows, labels[rows]] = 1.0
    else:
        valid = np.ones(R, dtype=bool)
        t = probs.astype(np.float64)
    if smoothing:
        t = t * (1.0 - smoothing) + smoothing / C
        t[~valid] = 0.0
    return t, wf, valid


def softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale):
    R, C = z.shape
    if R == 0:
        return
    zf = z.astype(np.float64)  # a copy: grad may alias z
    t, wf, valid = _target_matrix(labels, probs, w, ignore_index, smoothing, R, C)

    nan_row = np.isnan(zf).any(axis=1)
    zf[nan_row] = 0.0
    m = zf.max(axis=1)
    am = zf.argmax(axis=1)  # first maximum
    masked_row = m == -np.inf  # every class masked: treated as an ignored row
    inf_row = m == np.inf
    zf[masked_row] = 0.0
    m[masked_row] = 0.0
    with np.errstate(invalid="ignore"):
        sh = zf - m[:, None]  # <= 0, exact near the max (Sterbenz)
    # A row holding +inf: the limit puts equal mass on its +inf entries.
    sh[inf_row] = np.where(zf[inf_row] == np.inf, 0.0, -np.inf)

    e = np.exp(sh)
    rr = np.arange(R)
    e_am = e[rr, am].copy()  # == 1
    e[rr, am] = 0.0
    s1 = e.sum(axis=1)  # S' = sum over all but the argmax: S = 1 + S'
    e[rr, am] = e_am
    S = 1.0 + s1
    log_s = np.log1p(s1)  # log S without the rounding of 1 + S'
    p = e / S[:, None]
    q = s1 / S  # 1 - p_argmax, never formed as a difference
    skip = ~valid | masked_row

    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if op == "softmax_cross_entropy":
            a = t * wf  # weighted target; loss = -sum a_k log p_k
            A = a.sum(axis=1)
            # -sum a log p = A log S - sum a (z - m): both terms >= 0 for
            # a >= 0, so a dominant label (p -> 1) loses nothing to cancellation.
            l = A * log_s - _mul0(a, sh).sum(axis=1)
            g = p * A[:, None] - a
            # argmax entry: p*A - a = (A - a) - A*q, exact when p rounds to 1
            g[rr, am] = (A - a[rr, am]) - A * q
        elif op == "softmax_mse":
            d = p - t
            d[rr, am] = (1.0 - t[rr, am]) - q  # p_argmax - t without 1 - q rounding
            wd = wf * d
            l = (wd * d).sum(axis=1)
            wdp = wd * p
            wdp_am = wdp[rr, am].copy()
            wdp[rr, am] = 0.0
            d_rest = wdp.sum(axis=1)  # D' = sum over all but the argmax
            D = d_rest + wdp_am
            g = 2.0 * p * (wd - D[:, None])
            # argmax entry: w d - D = w d (1 - p) - D' = w d q - D' (no cancel)
            g[rr, am] = 2.0 * p[rr, am] * (wd[rr, am] * q - d_rest)
        else:  # pragma: no cover
            raise ValueError(f"unknown softmax op {op!r}")
        l = np.where(skip, 0.0, l)
        l[nan_row] = np.nan
        loss[...] = l
        if grad is not None:
            g = g * scale
            g[skip] = 0.0
            g[nan_row] = np.nan
            grad[...] = g
