"""Softmax row losses: per row a max pass, an exp pass, a gradient pass.

The exp pass stores ``exp(z - m)`` in the gradient row (the row stays in
cache) while it accumulates ``S'`` (the exp-sum without the first argmax)
and the loss terms; the last pass rescales those values in place.  Every
value of z a later pass needs is read before the row is overwritten, so the
gradient may alias ``z``.  Formulas mirror :func:`fastloss.reference.softmax_rows`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import jit, kernel, parallel_kernel
from ._math import add_reassoc, exp, mul0

CE, SMSE = 0, 1
_NAN = np.nan
_INF = np.inf


@jit
def _row_max(z, r, C):
    """First argmax, max and NaN flag of row ``r``."""
    m = -_INF
    am = 0
    bad = False
    for k in range(C):
        v = np.float64(z[r, k])
        if v > m:
            m = v
            am = k
        bad |= v != v
    return m, am, bad


@jit
def _shift(v, m, inf_row):
    """``z - m`` (<= 0, exact near the max); a +inf row keeps only its +infs."""
    if inf_row:
        return 0.0 if v == _INF else -_INF
    return v - m


@jit
def _row(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc, r):
    """Loss (and gradient when ``grad`` is non-empty) of row ``r``."""
    C = z.shape[1]
    has_g = grad.shape[0] > 0
    has_w = w.size > 0
    use_p = probs.shape[0] > 0
    y = -1 if use_p else labels[r]
    m, am, bad = _row_max(z, r, C)
    if bad or (not use_p and y == ignore_index) or m == -_INF:
        # NaN row -> NaN (wins over ignore); ignored / all-masked row -> 0
        fill = _NAN if bad else 0.0
        loss[r] = fill
        if has_g:
            for k in range(C):
                grad[r, k] = fill
        return
    inf_row = m == _INF
    cw = eps / C  # smoothing mass per class (0.0 without smoothing)
    sm = 1.0 - eps
    # label entry, read before the row can be overwritten (grad may be z)
    sh_y = _shift(np.float64(z[r, y]), m, inf_row) if y >= 0 else 0.0
    w_y = (np.float64(w[y]) if has_w else 1.0) if y >= 0 else 0.0
    a_y = (sm + cw) * w_y  # t_y * w_y; t_y = 1 * (1 - eps) + eps / C
    # ---- pass 2: e = exp(z - m) into the grad row, sums S', A, T
    s1 = 0.0  # S' = sum of e over all but the argmax: S = 1 + S'
    A = 0.0  # sum of weighted targets a_k
    T = 0.0  # sum of a_k * (z_k - m), 0 * -inf := 0
    for k in range(C):
        sh = _shift(np.float64(z[r, k]), m, inf_row)
        e = exp(sh)
        if has_g:
            grad[r, k] = e * esc  # scaled for float32: keeps tiny e normal
        s1 = add_reassoc(s1, e if k != am else 0.0)
        if use_p or eps != 0.0:
            wk = np.float64(w[k]) if has_w else 1.0
            if use_p:
                ak = np.float64(probs[r, k]) * wk
            else:
                ak = cw * wk if k != y else 0.0  # label entry added below
            A = add_reassoc(A, ak)
            T = add_reassoc(T, mul0(ak, sh))
    if y >= 0:
        A += a_y
        T += mul0(a_y, sh_y)
    S = 1.0 + s1
    q = s1 / S  # 1 - p_argmax, never formed as a difference
    if op == CE:
        # -sum a log p = A log S - sum a (z - m): two terms >= 0, no cancel
        loss[r] = A * math.log1p(s1) - T
        if not has_g:
            return
        # ---- pass 3: g = (p A - a) * scale, rescaling e in place
        inv_esc = 1.0 / esc
        for k in range(C):
            p = (np.float64(grad[r, k]) * inv_esc) / S
            if use_p:
                ak = np.float64(probs[r, k]) * (np.float64(w[k]) if has_w else 1.0)
            else:
                ak = cw * (np.float64(w[k]) if has_w else 1.0)
            grad[r, k] = (p * A - ak) * scale
        if y >= 0 and y != am:
            p_y = exp(sh_y) / S  # z_y was overwritten: recompute from sh_y
            grad[r, y] = (p_y * A - a_y) * scale
        a_am = a_y if am == y else (np.float64(probs[r, am]) if use_p else cw) * (np.float64(w[am]) if has_w else 1.0)
        # argmax entry: p A - a = (A - a) - A q, exact when p rounds to 1
        grad[r, am] = ((A - a_am) - A * q) * scale
        return
    # ---- softmax_mse: pass 3 sums l and D' from p, pass 4 writes the gradient
    l = 0.0
    d_rest = 0.0  # D' = sum of w d p over all but the argmax
    inv_esc = 1.0 / esc
    for k in range(C):
        if has_g:
            e = np.float64(grad[r, k]) * inv_esc
        else:
            e = exp(_shift(np.float64(z[r, k]), m, inf_row))
        p = e / S
        tk = np.float64(probs[r, k]) if use_p else (1.0 if k == y else 0.0)
        d = p - tk
        wd = (np.float64(w[k]) if has_w else 1.0) * d
        l = add_reassoc(l, wd * d if k != am else 0.0)
        d_rest = add_reassoc(d_rest, wd * p if k != am else 0.0)
    t_am = np.float64(probs[r, am]) if use_p else (1.0 if am == y else 0.0)
    p_am = 1.0 / S
    d_am = (1.0 - t_am) - q  # p_argmax - t without the rounding of 1 - q
    wd_am = (np.float64(w[am]) if has_w else 1.0) * d_am
    l += wd_am * d_am
    loss[r] = l
    if not has_g:
        return
    D = d_rest + wd_am * p_am
    for k in range(C):
        p = (np.float64(grad[r, k]) * inv_esc) / S
        tk = np.float64(probs[r, k]) if use_p else (1.0 if k == y else 0.0)
        wd = (np.float64(w[k]) if has_w else 1.0) * (p - tk)
        grad[r, k] = ((2.0 * p) * (wd - D)) * scale
    # argmax entry: w d - D = w d q - D' (no cancellation)
    grad[r, am] = ((2.0 * p_am) * (wd_am * q - d_rest)) * scale


@kernel
def softmax_serial(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc):
    """Rows in order on the calling thread."""
    for r in range(z.shape[0]):
        _row(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc, r)


@parallel_kernel
def softmax_parallel(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc):
    """Rows spread over numba's threads (each row's result is thread-independent)."""
    for r in prange(z.shape[0]):
        _row(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc, r)
