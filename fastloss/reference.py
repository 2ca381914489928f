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

``softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale) -> float``
    ``z``: (R, C) C-contiguous float.  Exactly one of ``labels`` ((R,) int64)
    and ``probs`` ((R, C), z's dtype) is given.  ``w``: (C,) or ``None``.
    ``loss``: (R,) float64, always filled with the per-row weighted loss.
    ``grad``: (R, C) of z's dtype or ``None``; ``scale`` times the row's
    own derivative.  ``grad`` may be ``z`` itself (in-place).  Returns the
    float64 sum of ``loss`` (in an order fixed by the backend).

All arithmetic is float64 (float32 inputs are widened, computed and rounded
once), with the formulas chosen so no intermediate cancels, overflows or
underflows where the true result is a normal number.
"""
from __future__ import annotations

import numpy as np

NAME = "numpy"

ELEMENTWISE_OPS = ("mse", "sigmoid_mse", "sigmoid_bce")
SOFTMAX_OPS = ("softmax_cross_entropy", "softmax_mse")

# softmax_mse's near set: z - m >= -ln(2)/2, where exp(z - m) >= 1/sqrt(2)
_HALF_LN2 = 0.5 * np.log(2.0)


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
    small = e / (1.0 + e)  # subnormal when e is: kept, not flushed
    pos = z >= 0
    return np.where(pos, big, small), np.where(pos, small, big)


#: below this |z|, sigma(z) - 1/2 is formed as tanh(z/2)/2: sigma(z) itself
#: rounds to 1/2 for |z| < 2**-54 and would give s - y = 0 for y = 1/2.
SMALL_Z = 1.0


def half_tanh(z):
    """``sigmoid(z) - 1/2 = tanh(z/2)/2``, exact to ~1 ulp for tiny z."""
    return 0.5 * np.tanh(0.5 * z)


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
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        small = np.abs(zf) < SMALL_Z
        h = half_tanh(np.where(small, zf, 0.0))
        if op == "mse":
            d = zf - yf
            # the weight goes in first: w d, then (w d) d and c (w d), so a
            # small weight cannot let d*d or 2*d overflow ahead of it
            wd = d if wf is None else _mul0(wf, d)
            l = _mul0(wd, d)
            g = c * wd
            wf = None
        elif op == "sigmoid_mse":
            s, sn = sigmoid_pair(zf)
            # s - y: for z >= 0 use (1 - y) - sigmoid(-z); (1 - y) is exact
            # for y in [0.5, 2], so y = 1 keeps every digit of sigmoid(-z).
            # Near z = 0 use (s - 1/2) + (1/2 - y) so y = 1/2 keeps its digits.
            r = np.where(zf >= 0, (1.0 - yf) - sn, s - yf)
            r = np.where(small, h + (0.5 - yf), r)
            l = r * r
            e = np.exp(-np.abs(zf))
            # s (1 - s) = e / (1 + e)^2 in three roundings; multiplied last so
            # the tiny factor cannot underflow ahead of the final product.
            g = (c * r) * (e / ((1.0 + e) * (1.0 + e)))
        elif op == "sigmoid_bce":
            s, sn = sigmoid_pair(zf)
            a = yf if pw is None else _periodic(pw, n) * yf
            b = 1.0 - yf
            # loss = a*softplus(-z) + b*softplus(z): both terms >= 0, no
            # cancellation; zero coefficients mask infinite softplus values.
            l = _mul0(a, softplus(-zf)) + _mul0(b, softplus(zf))
            # d/dz = b*s - a*sn; equals s - y for pw = 1 but keeps y = 1 -> -sn
            # and y = 0 -> s exact, and has exact limits at z = +-inf.  Near
            # z = 0, with s = 1/2 + h: (b - a)/2 + h (a + b) keeps y = 1/2.
            g = np.where(small, 0.5 * (b - a) + h * (a + b), b * s - a * sn)
            g = scale * g
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
        return 0.0
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
    with np.errstate(invalid="ignore", over="ignore"):
        sh = zf - m[:, None]  # <= 0, exact near the max (Sterbenz)
        # z - m overflows to -inf for finite z when |z|, |m| ~ 1e308; the loss
        # then needs a (z - m) = 2 a (z/2 - m/2) (test_oracle's huge rows).
        huge = np.isneginf(sh) & np.isfinite(zf) & np.isfinite(m)[:, None]
        half_sh = np.where(huge, 0.5 * zf - 0.5 * m[:, None], 0.0)
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
            term = np.where(huge, 2.0 * _mul0(a, half_sh), _mul0(a, sh))
            l = A * log_s - term.sum(axis=1)
            g = p * A[:, None] - a
            # argmax entry: p*A - a = (A - a) - A*q, exact when p rounds to 1;
            # A - a summed over the other classes, not subtracted
            a_am = a[rr, am].copy()
            a[rr, am] = 0.0
            g[rr, am] = a.sum(axis=1) - A * q
            a[rr, am] = a_am
        elif op == "softmax_mse":
            # With u = w (p - t): dl/dz_j = 2 p_j G_j, G_j = sum_k p_k (u_j - u_k)
            # (sum p = 1).  Summing then subtracting cancels to noise where
            # u_j ~ u_k for a heavy class k: classes at or near the max
            # ([-40, 0, 0, 0]; [-6, 0, 2^-6]: p_1 - p_2 cancels 64x).  So split
            # off the near set N = {k: z_k - m >= -ln2/2} (F: the rest) and
            # write p_k = p_max (1 + E_k) on N, E_k = expm1(z_k - m) to an ulp
            # (0 on ties): p_j - p_k = p_max (E_j - E_k) keeps its digits, and
            # the 1s cancel exactly in the sums below.  With P, W, B, A the
            # sums over N of p, p w, p w E, p w t, and Q, V_F the sums over F
            # of p, p u:
            #   j in N:  G_j = p_max ((w_j P - W) + (w_j E_j P - B))
            #                  - (w_j t_j P - A) + (Q u_j - V_F)
            #   j in F:  G_j = u_j - V_N - V_F,  V_N = sum_N p u
            #          = p_max ((W - WT P) + (B - BT P)) - A Q
            # (WT, BT = sum_N w t, w t E).  V_N's form uses sum p = 1 on A: a
            # label in N ([x, x, -10], label 1) makes p^2 - p (1 - p) cancel to
            # p Q.  A far class j cancels only what |z_j - m| >= ln2/2
            # conditions (README, stability contract).
            with np.errstate(invalid="ignore"):
                E = np.where(sh >= -_HALF_LN2, np.expm1(sh), 0.0)
            near = sh >= -_HALF_LN2
            # 1 - p_k = (S' - E_k) / S, both terms >= 0: a hard or heavy target
            # on a near class ([0, -40], label 0) keeps the digits p_k - t_k
            # would round off.
            d = np.where(near & (t >= 0.5), (1.0 - t) - (s1[:, None] - E) / S[:, None], p - t)
            u = wf * d
            l = (u * d).sum(axis=1)
            pn = np.where(near, p, 0.0)
            pf = np.where(near, 0.0, p)
            wt = np.where(near, wf * t, 0.0)
            P = pn.sum(axis=1)
            Q = pf.sum(axis=1)  # 1 - P, never formed as a difference
            A = (pn * wt).sum(axis=1)
            B = (pn * wf * E).sum(axis=1)
            WT = wt.sum(axis=1)
            BT = (wt * E).sum(axis=1)
            V_F = (pf * u).sum(axis=1)
            p_max = 1.0 / S
            g_near = (wf * E) * P[:, None] - B[:, None]
            if w is None:  # W = P: w_j P - W = 0, W - WT P = P (1 - WT)
                V_N = P * (1.0 - WT) + (B - BT * P)
            else:
                W = (pn * wf).sum(axis=1)
                g_near = g_near + (wf * P[:, None] - W[:, None])
                V_N = (W - WT * P) + (B - BT * P)
            g_near = p_max[:, None] * g_near - (wf * t * P[:, None] - A[:, None]) + (Q[:, None] * u - V_F[:, None])
            V_N = p_max * V_N - A * Q
            g_far = u - (V_N + V_F)[:, None]
            g = 2.0 * p * np.where(near, g_near, g_far)
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
    return float(np.add.reduce(loss))
