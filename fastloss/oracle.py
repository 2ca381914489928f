"""High-precision oracle: exact losses, gradients and condition numbers.

Every value is computed from the given floats taken *exactly*
(``mpmath.mpf(float(x))``) in 60-digit arithmetic, with formulas that cancel
only where the mathematics does (so the 60 digits are never spent on an
avoidable cancellation), and rounded once to float64.  Used by the stability
tests and by the benchmark report.  ``mpmath`` is a test/bench dependency and
is imported lazily.

Condition numbers are componentwise, :math:`\\kappa = \\sum_j |x_j\\,
\\partial f/\\partial x_j| / |f|` over the float inputs (logits, targets,
weights, pos_weight), from closed-form derivatives; ``0/0 := 0`` and
``c/0 := inf``.  Target entries that are exactly 0 or 1 (hard labels) are
exact in every formula the library uses (``1 - y`` is exact), so they carry
no conditioning; without that rule ``y = 1`` at ``z = 17`` would have
``kappa ~ 1/sigmoid(-z)`` and hide the peers' ``1 - sigmoid(z)`` failure.  Softmax functions are invariant to a common shift of the
row, so their logit coordinates are the shifted ``z_j - max(z)`` (exact for
entries near the max, by Sterbenz): that is the conditioning a shift-stable
algorithm achieves, and it keeps ``c + [1, 0, 0]`` with ``c = 1e7`` a
well-conditioned row.  Exact limits (infinite inputs, masked or ignored rows,
NaN) get ``kappa = 0``: they must be reproduced exactly.

Cost: pure-Python mpmath, ~0.1 ms per element; O(C) per cross-entropy row
(~0.2 s for C = 1000) but O(C^2) per softmax_mse row (its gradient condition
numbers do not factor): meant for thousands of points, not benchmark arrays.

The library's semantics for special inputs are mirrored: a zero weight or
target coefficient masks (``0 * inf := 0``), ``-inf`` softmax entries are
masked classes, an all ``-inf`` row has loss 0 and gradient 0, a row holding
``+inf`` takes the limit (equal mass on its ``+inf`` entries), NaN in an
element/row gives NaN loss and gradient there.
"""
from __future__ import annotations

import math

import numpy as np

DPS = 60


#: The stability contract's accuracy bound: a per-element/per-row result is
#: within ``CONTRACT_ULPS[dtype] * (1 + kappa)`` ulp of the exact value.
#: float16/float32 are computed in float64 and rounded once (~0.5 ulp); float64
#: has no wider type to compute in and the stable formulas chain up to ~10
#: roundings (softmax_mse's argmax entry: 17 ulp at kappa 1.28), hence 8.
CONTRACT_ULPS = {"float16": 4.0, "float32": 4.0, "float64": 8.0}


def _mp():
    import mpmath

    mpmath.mp.dps = DPS
    return mpmath


def _cond(terms, f):
    """sum |terms| / |f| with 0/0 := 0 and c/0 := inf (terms are mpf)."""
    if not _finite(f):  # infinite result: an exact limit
        return 0.0
    num = sum(abs(t) for t in terms)
    if num == 0:
        return 0.0
    if f == 0:
        return math.inf
    return float(num / abs(f))


def _finite(v):
    return v == v and abs(v) != float("inf")


def _mul0(c, v):
    """c * v with 0 * anything := 0 (zero coefficients mask exactly)."""
    return 0 if c == 0 else c * v


def _sig(mp, z):
    """(sigmoid(z), sigmoid(-z)) without forming 1 - s (exact tails)."""
    e = mp.exp(-abs(z))
    big = 1 / (1 + e)
    small = e * big
    return (big, small) if z >= 0 else (small, big)


def _softplus(mp, z):
    return max(z, 0) + mp.log1p(mp.exp(-abs(z)))


# --------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------
def _elem_inf(op, z, y, w, pw):
    """Exact limits at z = +-inf (finite y, w, pw): (loss, grad) as floats."""
    pos = z > 0
    if op == "mse":
        if w == 0:
            return 0.0, 0.0
        return math.copysign(math.inf, w), math.copysign(math.inf, w if pos else -w)
    if op == "sigmoid_mse":
        r = (1.0 - y) if pos else -y
        return float(w * (r * r)), 0.0  # the factor s(1-s) -> 0 wins
    a, b = pw * y, 1.0 - y
    if pos:  # softplus(-z) -> 0, softplus(z) -> inf, grad -> b
        return (0.0 if b * w == 0 else math.copysign(math.inf, b * w)), float(w * b)
    return (0.0 if a * w == 0 else math.copysign(math.inf, a * w)), float(-w * a)


def _elem_one(mp, op, zf, yf, wf, pwf, has_w, has_pw):
    """One element: (loss, grad, loss_cond, grad_cond)."""
    if any(math.isnan(v) for v in (zf, yf, wf, pwf)):
        if wf == 0 and not math.isnan(wf):
            return 0.0, 0.0, 0.0, 0.0
        return math.nan, math.nan, 0.0, 0.0
    if math.isinf(zf) and all(math.isfinite(v) for v in (yf, wf, pwf)):
        l, g = _elem_inf(op, zf, yf, wf, pwf)
        return l, g, 0.0, 0.0
    if not all(math.isfinite(v) for v in (yf, wf, pwf)):
        raise ValueError("oracle.elementwise: infinite target/weight/pos_weight values are outside its domain")
    z, y, w, pw = (mp.mpf(v) for v in (zf, yf, wf, pwf))
    if op == "mse":
        d = z - y
        l, g = d * d, 2 * d
        lt = [z * 2 * d, y * 2 * d]  # x dl/dx for z, y
        gt = [2 * z, 2 * y]
    elif op == "sigmoid_mse":
        s, sn = _sig(mp, z)
        r = ((1 - y) - sn) if z >= 0 else (s - y)  # s - y without 1 - sn
        ss = s * sn
        l, g = r * r, 2 * r * ss
        lt = [z * g, y * 2 * r]
        # dg/dz = 2 ss (ss + r (1 - 2s)) with 1 - 2s = sn - s
        gt = [z * 2 * ss * (ss + r * (sn - s)), y * 2 * ss]
    else:  # sigmoid_bce
        s, sn = _sig(mp, z)
        spn, spp = _softplus(mp, -z), _softplus(mp, z)
        a, b = pw * y, 1 - y
        l = _mul0(a, spn) + _mul0(b, spp)
        g = b * s - a * sn
        lt = [z * g, y * (_mul0(pw, spn) - spp)]
        gt = [z * s * sn * (a + b), y * (s + pw * sn)]
        if has_pw:
            lt.append(_mul0(a, spn))
            gt.append(a * sn)
    if yf in (0.0, 1.0):  # hard labels are exact in every formula (1 - y exact)
        lt[1] = gt[1] = 0
    l, g = _mul0(w, l), _mul0(w, g)
    lt = [_mul0(w, t) for t in lt]
    gt = [_mul0(w, t) for t in gt]
    if has_w:  # d(w f)/dw * w = w f
        lt.append(l)
        gt.append(g)
    return float(l), float(g), _cond(lt, l), _cond(gt, g)


def elementwise(op, z, y, w=None, pw=None):
    """Exact per-element weighted loss and gradient of an elementwise op.

    Parameters
    ----------
    op : {'mse', 'sigmoid_mse', 'sigmoid_bce'}
    z, y : array_like
        Logits (predictions for ``mse``) and targets; broadcast together.
    w, pw : array_like, optional
        Weight and (``sigmoid_bce`` only) pos_weight, broadcast to ``z``.

    Returns
    -------
    loss, grad, loss_cond, grad_cond : ndarray of float64, ``z``'s shape
        ``w*l`` and ``d(w*l)/dz`` (scale 1) correctly rounded from 60 digits
        (overflow gives ``inf``, tiny values keep their subnormal digits) and
        the componentwise condition number of each.

    Examples
    --------
    >>> from fastloss import oracle
    >>> l, g, kl, kg = oracle.elementwise("sigmoid_bce", [-700.0], [0.0])
    >>> float(l[0]) > 0, float(g[0]) == float(l[0])  # softplus(z) ~ sigmoid(z) ~ e^z
    (True, True)
    """
    mp = _mp()
    z = np.asarray(z, dtype=np.float64)
    shape = z.shape
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), shape).ravel()
    wa = np.broadcast_to(np.asarray(1.0 if w is None else w, dtype=np.float64), shape).ravel()
    pwa = np.broadcast_to(np.asarray(1.0 if pw is None else pw, dtype=np.float64), shape).ravel()
    out = np.empty((4, z.size))
    for i, zf in enumerate(z.ravel()):
        out[:, i] = _elem_one(mp, op, float(zf), float(y[i]), float(wa[i]), float(pwa[i]),
                              w is not None, pw is not None)
    return tuple(o.reshape(shape) for o in out)


# --------------------------------------------------------------------------
# softmax rows
# --------------------------------------------------------------------------
def _row_limit(op, z, a, t, w):
    """Row holding +inf: equal mass on the +inf entries, exact (kappa 0)."""
    top = [k for k, v in enumerate(z) if v == math.inf]
    C = len(z)
    p = [1.0 / len(top) if k in top else 0.0 for k in range(C)]
    if op == "softmax_cross_entropy":
        A = sum(a)
        l = 0.0
        for k in range(C):
            if a[k]:
                l += a[k] * (math.log(len(top)) if k in top else math.inf)
        return l, [p[k] * A - a[k] for k in range(C)]
    d = [p[k] - t[k] for k in range(C)]
    l = sum(w[k] * d[k] * d[k] for k in range(C))
    D = sum(w[k] * d[k] * p[k] for k in range(C))
    return l, [2 * p[k] * (w[k] * d[k] - D) for k in range(C)]


def _smse(mp, d, t, w, live):
    """softmax_mse on shifted logits d (max entries 0): (loss, grad, p - t, w (p - t)).

    u_j - sum_k p_k u_k is summed as sum_k p_k (u_j - u_k) (sum p = 1): the
    pairwise differences vanish exactly for tied classes, so rows like
    [-1e18, 0, 0, 0] keep their e^-1e18-sized gradient instead of noise from
    subtracting two O(1) sums.
    """
    C = len(d)
    e = [mp.exp(d[k]) if k in live else mp.mpf(0) for k in range(C)]
    top = [k for k in live if d[k] == 0]
    s1 = sum(e[k] for k in range(C) if k not in top)  # mass off the max, exact
    S = len(top) + s1
    p = [ek / S for ek in e]
    dd = [p[k] - t[k] for k in range(C)]
    if len(top) == 1:  # p_argmax - t = (1 - t) - s1/S without rounding 1 - q
        dd[top[0]] = (1 - t[top[0]]) - s1 / S
    wd = [w[k] * dd[k] for k in range(C)]
    l = sum(wd[k] * dd[k] for k in range(C))
    g = [2 * p[j] * sum(p[k] * (wd[j] - wd[k]) for k in range(C) if k != j) for j in range(C)]
    return l, g, dd, wd


def _row(mp, op, zr, t_f, w_f, has_probs, has_w):
    """One valid row: (loss, grad list, loss_cond, grad_cond list)."""
    C = len(zr)
    if any(math.isnan(v) for v in zr):
        return math.nan, [math.nan] * C, 0.0, [0.0] * C
    if all(v == -math.inf for v in zr):
        return 0.0, [0.0] * C, 0.0, [0.0] * C
    if any(v == math.inf for v in zr):
        a = [_mul0(w_f[k], t_f[k]) for k in range(C)]
        l, g = _row_limit(op, zr, a, t_f, w_f)
        return l, g, 0.0, [0.0] * C
    m_f = max(zr)
    am = zr.index(m_f)
    live = [k for k in range(C) if zr[k] != -math.inf]
    d = [mp.mpf(zr[k]) - mp.mpf(m_f) if k in live else None for k in range(C)]
    e = [mp.exp(d[k]) if k in live else mp.mpf(0) for k in range(C)]
    s1 = sum(e[k] for k in range(C) if k != am)  # S' = S - 1, no rounding of 1 + S'
    S = 1 + s1
    logS = mp.log1p(s1)
    p = [ek / S for ek in e]
    q = s1 / S  # 1 - p_argmax without cancellation
    t = [mp.mpf(v) for v in t_f]
    w = [mp.mpf(v) for v in w_f]
    # target entries that carry conditioning: hard 0/1 entries are exact
    soft = [k for k in range(C) if has_probs and t_f[k] not in (0.0, 1.0)]
    # x_j * d/dx_j terms: shifted logits, targets, weights (only where given)
    if op == "softmax_cross_entropy":
        a = [_mul0(w[k], t[k]) for k in range(C)]
        A = sum(a)
        logp = [d[k] - logS if k in live else -mp.inf for k in range(C)]
        l = -sum(_mul0(a[k], logp[k]) for k in range(C))
        g = [p[k] * A - a[k] for k in range(C)]
        g[am] = sum(a[k] for k in range(C) if k != am) - A * q  # p A - a at p -> 1
        lt = [d[k] * g[k] for k in live]
        # targets enter as a_k = w_k t_k: x d/dx is -a_k log p_k for each
        coef = [-_mul0(a[k], logp[k]) for k in range(C)]
        lt += [coef[k] for k in soft] + (coef if has_w else [])
        # dg_j/dz_k = A p_j (delta_jk - p_k), dg_j/da_k = p_j - delta_jk: the
        # sums of |x_k dg_j/dx_k| factor through O(C) totals (O(C) per row).
        T = sum(abs(d[k]) * p[k] for k in live if k != am)
        # a_k enters once per soft target entry and once more per weight
        Aabs = sum(abs(a[k]) for k in soft) + (sum(abs(v) for v in a) if has_w else 0)
        gt = []
        for j in range(C):
            zj = abs(A) * p[j] * T
            if j != am and j in live:  # own term: |d_j| (1 - p_j) instead of |d_j| p_j
                zj += abs(A) * p[j] * abs(d[j]) * ((1 - p[j]) - p[j])
            mult = int(j in soft) + int(has_w)
            one_minus = q if j == am else 1 - p[j]
            aj = p[j] * Aabs + mult * abs(a[j]) * (one_minus - p[j])
            gt.append([zj, aj])
    else:  # softmax_mse
        l, g, dd, wd = _smse(mp, d, t, w, live)
        lt = [d[k] * g[k] for k in live]
        lt += [-2 * t[k] * wd[k] for k in soft]
        if has_w:
            lt += [wd[k] * dd[k] for k in range(C)]
        # The gradient's partial derivatives cancel like the gradient itself
        # (rows [-240, 31] need ~240 digits), so differentiate the accurate
        # pairwise form numerically instead: x_k dg_j/dx_k by central
        # differences with relative step 1e-25 at 60 digits.
        h = mp.mpf("1e-25")
        coords = [("d", k) for k in live if d[k] != 0] + [("t", k) for k in soft] \
            + ([("w", k) for k in range(C)] if has_w else [])
        gt = [[] for _ in range(C)]
        for kind, k in coords:
            src = {"d": d, "t": t, "w": w}[kind]
            x = src[k]
            parts = []
            for sign in (1, -1):
                src[k] = x * (1 + sign * h)
                args = (d, t, w)
                parts.append(_smse(mp, *args, live)[1])
            src[k] = x
            for j in range(C):
                gt[j].append((parts[0][j] - parts[1][j]) / (2 * h))
    return float(l), [float(v) for v in g], _cond(lt, l), [_cond(gt[j], g[j]) for j in range(C)]


def softmax_rows(op, z2d, labels=None, probs=None, w=None, ignore_index=-100, smoothing=0.0):
    """Exact per-row loss and gradient of a softmax op, with the library's semantics.

    Parameters
    ----------
    op : {'softmax_cross_entropy', 'softmax_mse'}
    z2d : array_like, shape (R, C)
        Logits, class axis last.
    labels : array_like of int, shape (R,), optional
        Class labels (``ignore_index`` rows give loss 0 and gradient 0).
    probs : array_like, shape (R, C), optional
        Target distributions (exactly one of labels/probs).
    w : array_like, shape (C,), optional
        Class weights.
    ignore_index : int
    smoothing : float
        Label smoothing (cross-entropy only): t = (1 - eps) t + eps / C.

    Returns
    -------
    loss : ndarray (R,), grad : ndarray (R, C), loss_cond : ndarray (R,), grad_cond : ndarray (R, C)
        float64, ``grad`` with scale 1 (each row's own derivative).

    Examples
    --------
    >>> import numpy as np
    >>> from fastloss import oracle
    >>> l, g, kl, kg = oracle.softmax_rows("softmax_cross_entropy", [[1e7 + 1, 1e7, 1e7]], labels=[0])
    >>> round(float(l[0]), 12), float(kl[0]) < 10   # log(1 + 2/e), well conditioned
    (0.551444713932, True)
    """
    mp = _mp()
    z = np.asarray(z2d, dtype=np.float64)
    R, C = z.shape
    wf = [1.0] * C if w is None else [float(v) for v in np.asarray(w, dtype=np.float64)]
    loss, lc = np.zeros(R), np.zeros(R)
    grad, gc = np.zeros((R, C)), np.zeros((R, C))
    for r in range(R):
        zr = [float(v) for v in z[r]]
        if labels is not None:
            lab = int(labels[r])
            if lab == ignore_index:
                if any(math.isnan(v) for v in zr):  # NaN wins over ignore, as the library
                    loss[r], grad[r] = math.nan, math.nan
                continue
            t = [1.0 if k == lab else 0.0 for k in range(C)]
        else:
            t = [float(v) for v in np.asarray(probs[r], dtype=np.float64)]
        if smoothing:  # the smoothed target, rounded to float64 like the library's
            eps = mp.mpf(float(smoothing))
            t = [float(mp.mpf(v) * (1 - eps) + eps / C) for v in t]
        live = [v for v in zr if math.isfinite(v)]
        spread = max(live) - min(live) if live and op == "softmax_mse" else 0.0
        # softmax_mse's pairwise terms can cancel down to p_min ~ e^-spread
        # ([-58, 86, 86], label 1: p (1 - 2p) = p p_0, 63 digits below 1/4), so
        # carry that many digits more (up to the float64 range, 1e-340)
        with mp.workdps(DPS + int(min(spread / math.log(10.0), 360.0))):
            l, g, kl, kg = _row(mp, op, zr, t, wf, labels is None or bool(smoothing), w is not None)
        loss[r], grad[r], lc[r], gc[r] = l, g, kl, kg
    return loss, grad, lc, gc


def ulp_error(actual, exact, dtype):
    """Error of ``actual`` in units in the last place of ``dtype`` at ``exact``.

    The ulp is taken at the exact value's magnitude rounded to ``dtype``
    (``numpy.spacing``), with the subnormal floor (the smallest subnormal at
    0).  0 where both are equal (``inf == inf`` of the same sign, NaN
    matching NaN); ``inf`` where exactly one is NaN, or where one is
    infinite and the other is not (or infinities of opposite signs).

    Examples
    --------
    >>> import numpy as np
    >>> from fastloss import oracle
    >>> oracle.ulp_error(np.float32(1.0) + np.spacing(np.float32(1.0)), 1.0, np.float32).tolist()
    1.0
    """
    dtype = np.dtype(dtype)
    a = np.asarray(actual, dtype=np.float64)
    x = np.asarray(exact, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        xd = x.astype(dtype).astype(np.float64)  # overflow beyond dtype's max -> inf
        ulp = np.spacing(np.abs(xd).astype(dtype)).astype(np.float64)
        err = np.abs(a - x) / ulp
    an, xn = np.isnan(a), np.isnan(xd)
    af, xf = np.isfinite(a), np.isfinite(xd)
    err = np.where(an | xn, np.where(an & xn, 0.0, np.inf), err)
    both_inf = ~af & ~xf & ~an & ~xn
    err = np.where(both_inf, np.where(a == xd, 0.0, np.inf), err)
    err = np.where(af ^ xf, np.inf, err)
    return err
