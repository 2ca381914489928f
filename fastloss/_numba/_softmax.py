"""Softmax row losses: a max pass, an exp pass, a gradient pass per row.

Each row is first copied into its work row (the gradient row itself, or a
scratch row when no gradient is asked) during the max pass; every later pass
reads and writes that one row, which stays in cache.  So the gradient may
alias ``z``, and because a loop that reads and writes the same array needs
no aliasing check, LLVM takes the same vectorised loop (the same summation
order) in place or not: results are bitwise identical either way.  The exp
pass stores ``exp(z - m)`` while it accumulates ``S'`` (the exp-sum without
the first argmax) and the loss terms; the last pass rescales in place.
Formulas mirror :func:`fastloss.reference.softmax_rows`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import jit, jit_inline, kernel, parallel_kernel
from ._math import _LN2_HI, _LN2_LO, add_reassoc, exp, exp_scaled_f32, is_f32, mul0, tree_sum

CE, SMSE = 0, 1
_NAN = np.nan
_INF = np.inf
_FIND = 64  # argmax search: test 64 entries at once, then scan that block
_KMIN = np.int64(-(2 ** 63))
_MASK32 = np.int64(0x7FFFFFFF)
_MASK64 = np.int64(0x7FFFFFFFFFFFFFFF)
_SHORT = 64  # rows shorter than this take the scalar max pass (same result)
# Per-row helpers taking arrays are inlined at numba-IR level: a real call
# increments and decrements every array's refcount (atomics, ~40 ns a call),
# which dominated rows of 10 classes.


@jit
def _copy_max_short(zr, wr):
    """:func:`_copy_max` for short rows: one scalar pass, selects not branches."""
    m = -_INF
    am = 0
    bad = False
    for k in range(zr.size):
        v = np.float64(zr[k])
        wr[k] = zr[k]
        gt = v > m
        am = k if gt else am
        m = v if gt else m
        bad |= v != v
    return (_NAN if bad else m), am, bad


@jit_inline
def _copy_max(zr, wr):
    """Copy ``zr`` into ``wr``; return (max, first argmax, has NaN)."""
    C = zr.size
    if C < _SHORT:  # short rows: one scalar pass beats three vector loops' setup
        return _copy_max_short(zr, wr)
    # One vectorised pass: copy (a no-op in place), count NaNs, and take the
    # max as an *integer* max of order-preserving keys of the float bits
    # (LLVM will not vectorise a float max reduction; it does vpmaxsq).
    nans = 0
    kmax = _KMIN
    if is_f32(zr):
        for k in range(C):
            v = zr[k]
            wr[k] = v
            nans += v != v
            b = np.int64(np.float32(v).view(np.int32))
            kmax = max(kmax, b ^ ((b >> 63) & _MASK32))  # negative: flip magnitude bits
        if nans:
            return _NAN, 0, True
        m = np.float64(np.int32(kmax ^ ((kmax >> 63) & _MASK32)).view(np.float32))
    else:
        for k in range(C):
            v = zr[k]
            wr[k] = v
            nans += v != v
            b = np.float64(v).view(np.int64)
            kmax = max(kmax, b ^ ((b >> 63) & _MASK64))
        if nans:
            return _NAN, 0, True
        m = np.int64(kmax ^ ((kmax >> 63) & _MASK64)).view(np.float64)
    if m == -_INF:
        return m, 0, False
    # first index holding m: test _FIND entries at a time (a vector OR, in
    # the row's dtype: m is one of its values, exact), then scan that block
    mz = wr.dtype.type(m)
    b0 = 0
    while b0 + _FIND <= C:
        hit = np.int32(0)
        for k in range(b0, b0 + _FIND):
            hit |= np.int32(wr[k] == mz)
        if hit:
            break
        b0 += _FIND
    am = b0
    while am < C - 1 and wr[am] != mz:
        am += 1
    return m, am, False


@jit
def _shift(v, m, inf_row):
    """``z - m`` (<= 0, exact near the max); a +inf row keeps only its +infs."""
    if inf_row:
        return 0.0 if v == _INF else -_INF
    return v - m


@jit
def _term(a, sh, v, m, inf_row):
    """``a (z - m)`` with ``0 * -inf := 0``.

    ``z - m`` overflows to -inf for finite z when |z|, |m| ~ 1e308: then
    ``2 (a (z/2 - m/2))`` (a select, so the loop stays vectorised).
    """
    huge = sh == -_INF and v != -_INF and not inf_row
    return 2.0 * mul0(a, 0.5 * v - 0.5 * m) if huge else mul0(a, sh)


_SUMB = 1024  # classes per block of the target sums of smoothed / probability rows


@jit
def _neumaier(s, c, x):
    """``(s + x, c + error)``: one step of Neumaier's compensated sum (the
    rounding error of each addition is kept in ``c``, added at the end).
    An infinite or NaN sum keeps ``c`` as it is (inf - inf would make it NaN)."""
    t = s + x
    if abs(t) < _INF:
        c += ((s - t) + x) if abs(s) >= abs(x) else ((x - t) + s)
    return t, c


@jit_inline
def _row(op, zr, r, labels, probs, w, ignore_index, eps, wr, has_g, loss, scale, esc):
    """Loss of row ``r`` into ``loss[r]``; its gradient into ``wr`` if ``has_g``."""
    C = zr.size
    has_w = w.size > 0
    use_p = probs.shape[0] > 0
    y = -1 if use_p else labels[r]
    m, am, bad = _copy_max(zr, wr)
    # a label outside [0, C) (the API rejects these; a direct kernel call
    # gets a NaN row, never an access out of bounds)
    bad = bad or (not use_p and y != ignore_index and not 0 <= y < C)
    if bad or (not use_p and y == ignore_index) or m == -_INF:
        # NaN row -> NaN (wins over ignore); ignored / all-masked row -> 0
        fill = _NAN if bad else 0.0
        loss[r] = fill
        if has_g:
            for k in range(C):
                wr[k] = fill
        return
    inf_row = m == _INF
    cw = eps / C  # smoothing mass per class (0.0 without smoothing)
    keep = 1.0 - eps  # t' = (1 - eps) t + eps / C, probability targets too
    # label entry, read before the row is overwritten (wr may be z's row)
    v_y = np.float64(wr[y]) if y >= 0 else 0.0
    sh_y = _shift(v_y, m, inf_row) if y >= 0 else 0.0
    w_y = (np.float64(w[y]) if has_w else 1.0) if y >= 0 else 0.0
    a_y = (keep + cw) * w_y  # t_y w_y with t_y = 1 (1 - eps) + eps / C
    w_am = np.float64(w[am]) if has_w else 1.0
    if use_p:
        a_am = (np.float64(probs[r, am]) * keep + cw) * w_am
    else:
        a_am = a_y if am == y else cw * w_am
    # ---- exp pass: e = exp(z - m) in place, sums S', A', T
    s1 = 0.0  # S' = sum of e over all but the argmax: S = 1 + S'
    a_rest = 0.0  # A' = sum of weighted targets a_k over all but the argmax
    T = 0.0  # sum of a_k (z_k - m), with 0 * -inf := 0
    tau = 0.0  # softmax_mse: classes tied with the max (z == m, e == 1)
    e_rest = 0.0  # softmax_mse: sum of e over the classes not tied
    e2_rest = 0.0  # softmax_mse: sum of e^2 over the classes not tied
    sums = use_p or eps != 0.0
    f32 = is_f32(zr)  # constant: shorter exp series for float32 rows
    if op == SMSE and f32 and not inf_row:
        # float32 rows: exp in float32 (16 lanes), the sums in float64 in a
        # second pass (see the CE branch below); ties tagged as there
        m32 = np.float32(m)
        for k in range(C):
            x = np.float32(wr[k]) - m32
            e = exp_scaled_f32(x)
            wr[k] = e if x == 0.0 else -e
        for k in range(C):
            v = np.float64(wr[k])
            tied = v > 0.0
            tau = add_reassoc(tau, 1.0 if tied else 0.0)  # exact: integer counts
            e_rest = add_reassoc(e_rest, 0.0 if tied else -v)
            e2_rest = add_reassoc(e2_rest, 0.0 if tied else v * v)  # e 2**100: v^2 <= 2**200
        e_rest *= 1.0 / esc  # exact: a power of 2
        e2_rest *= 1.0 / (esc * esc)
        # tied classes have e = 1 exactly (z - m = 0): S' (all but the
        # argmax) is e_rest + (tau - 1), one rounding, no third sum
        s1 = e_rest + (tau - 1.0)
    elif op == SMSE:  # separate loops: op is a runtime value, branches inside stop vectorising
        for k in range(C):
            sh = _shift(np.float64(wr[k]), m, inf_row)
            e = exp(sh, f32)
            # tied classes stored +e, the rest -e: the tie survives the
            # overwrite (an untied e may round to 1)
            tied = sh == 0.0
            wr[k] = (e if tied else -e) * esc
            tau = add_reassoc(tau, 1.0 if tied else 0.0)  # exact: integer counts
            e_rest = add_reassoc(e_rest, 0.0 if tied else e)
            e2_rest = add_reassoc(e2_rest, 0.0 if tied else e * e)
        s1 = e_rest + (tau - 1.0)  # tied e = 1 exactly: S' without a third sum
    elif not sums and f32 and not inf_row:
        # float32 labels: exp in float32 (16 lanes, not 4), then S' summed in
        # float64 in a second, cheap pass.  z - m is a float32 difference
        # (see exp_scaled_f32); m is a float32 value, exact
        m32 = np.float32(m)
        for k in range(C):
            wr[k] = exp_scaled_f32(np.float32(wr[k]) - m32)
        for k in range(C):
            s1 = add_reassoc(s1, np.float64(wr[k]) if k != am else 0.0)
        s1 *= 1.0 / esc  # exact: a power of 2
    elif not sums:  # labels without smoothing: the hot loop, exp and S' only
        for k in range(C):
            e = exp(_shift(np.float64(wr[k]), m, inf_row), f32)
            wr[k] = e * esc  # float32 rows hold e * 2**100: tiny e stays normal
            s1 = add_reassoc(s1, e if k != am else 0.0)
    else:
        # S', A' and T by blocks of _SUMB classes (vectorised sums), the
        # block sums added with a compensated (Neumaier) sum: a running sum of
        # C equal smoothing terms eps/C rounds the same way every time
        # (float64, C = 2**20: the gradient 4.8x the test tolerance off)
        s_c = 0.0
        a_c = 0.0
        T_c = 0.0
        # unsigned indices: numba adds no negative-index wraparound to them,
        # which would keep the loop scalar (y < 0 never matches: uy = C)
        uam = np.uint64(am)
        uy = np.uint64(y) if y >= 0 else np.uint64(C)
        for b0 in range(0, C, _SUMB):
            a_b = 0.0
            T_b = 0.0
            s_b = 0.0
            for k in range(np.uint64(b0), np.uint64(min(C, b0 + _SUMB))):
                v = np.float64(wr[k])
                sh = _shift(v, m, inf_row)
                e = exp(sh, f32)
                wr[k] = e * esc
                s_b = add_reassoc(s_b, e if k != uam else 0.0)
                wk = np.float64(w[k]) if has_w else 1.0
                if use_p:
                    ak = (np.float64(probs[r, k]) * keep + cw) * wk
                else:
                    ak = cw * wk if k != uy else 0.0  # label entry added below
                a_b = add_reassoc(a_b, ak if k != uam else 0.0)
                # float32 z: z - m cannot overflow in float64, no select needed
                T_b = add_reassoc(T_b, mul0(ak, sh) if f32 else _term(ak, sh, v, m, inf_row))
            s1, s_c = _neumaier(s1, s_c, s_b)
            a_rest, a_c = _neumaier(a_rest, a_c, a_b)
            T, T_c = _neumaier(T, T_c, T_b)
        s1 += s_c
        a_rest += a_c
        T += T_c
    if y >= 0:
        a_rest += a_y if y != am else 0.0
        T += _term(a_y, sh_y, v_y, m, inf_row)
    A = a_rest + a_am
    S = 1.0 + s1
    q = s1 / S  # 1 - p_argmax, never formed as a difference
    inv_esc = 1.0 / esc
    rs = inv_esc / S  # float32 rows: p = e * rs (the extra f64 rounding never shows)
    if op == CE:
        # -sum a log p = A log S - sum a (z - m): two terms >= 0, no cancel
        loss[r] = A * math.log1p(s1) - T
        if not has_g:
            return
        # ---- gradient pass: g = (p A - a) scale, rescaling e in place
        p_y = (np.float64(wr[y]) * rs if f32 else (np.float64(wr[y]) * inv_esc) / S) if y >= 0 else 0.0
        if f32 and not sums:  # every a_k = 0 off the label: g = p A scale, one product
            c = rs * A * scale  # float64: no underflow of the 2**-100 factor, one rounding
            for k in range(C):
                wr[k] = np.float64(wr[k]) * c
        else:
            for k in range(C):
                p = np.float64(wr[k]) * rs if f32 else (np.float64(wr[k]) * inv_esc) / S
                wk = np.float64(w[k]) if has_w else 1.0
                ak = (np.float64(probs[r, k]) * keep + cw) * wk if use_p else cw * wk
                wr[k] = (p * A - ak) * scale
        if y >= 0 and y != am:
            wr[y] = (p_y * A - a_y) * scale  # a_y differs from cw w_y (p_y read before overwrite)
        # argmax entry: p A - a = A' - A q (the others' a summed, never
        # A - a subtracted): exact when p rounds to 1
        wr[am] = (a_rest - A * q) * scale
        return
    _smse_tail(zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, tau, e_rest, e2_rest)


@jit
def _smse_plain_lv(xy, e2_rest, S, p_y, p_max, tau, Q):
    """softmax_mse loss l and V = sum over the untied of p (p - t) for w = 1,
    one-hot t, without a loop over the row; returns ``(l, V, WT_T)``.

    ``xy`` is the label's stored (tie-tagged) e, ``p_y`` its probability and
    ``e2_rest`` the sum of e^2 over the untied classes.  With P2 = that sum
    over S^2:  V = P2 - [y untied] p_y  and
    l = P2 + [y untied] (1 - 2 p_y) + the tied classes' d^2, where a tied
    class has d = p_max - t, or (1 - t) - Q when it is alone (a lone max:
    exact when p_max rounds to 1).
    """
    y_tied = xy > 0.0
    WT_T = 1.0 if y_tied else 0.0
    P2 = e2_rest / (S * S)
    if y_tied:
        V = P2
        l = P2
    else:
        V = P2 - p_y
        l = P2 + (1.0 - 2.0 * p_y)  # = P2 - p_y^2 + (p_y - 1)^2; p_y < 1/2: 2 p_y exact
    if tau == 1.0:
        d_t = (1.0 - WT_T) - Q
        l += d_t * d_t
    else:
        l += (tau - WT_T) * (p_max * p_max) + WT_T * ((p_max - 1.0) * (p_max - 1.0))
    return l, V, WT_T


@jit_inline
def _smse_g(p, a_j, u, p_max, Q, V, scale):
    """One softmax_mse gradient entry, 2 p (p_max a_j + (Q u - V)) scale:
    the tie split of :func:`fastloss.reference.softmax_rows` (u = w d; a_j
    the tied or the untied form), one grouping for every path."""
    return ((2.0 * p) * (p_max * a_j + (Q * u - V))) * scale


@jit
def _smse_tied_grads(p_max, Q, tau, W_T, WT_T, V, scale, one_tied):
    """The gradient of a tied entry of a plain softmax_mse row (w = 1,
    one-hot t; p = p_max exactly): ``(label, other)``.  The general form's
    arithmetic with its t, so the bits are the same; a row needs it twice,
    not once per entry (a vector loop computes both sides of a select)."""
    d1 = ((1.0 - 1.0) - Q) if one_tied else (p_max - 1.0)
    d0 = ((1.0 - 0.0) - Q) if one_tied else (p_max - 0.0)
    a1 = p_max * (tau - W_T) - (tau * 1.0 - WT_T)
    a0 = p_max * (tau - W_T) - (tau * 0.0 - WT_T)
    return _smse_g(p_max, a1, d1, p_max, Q, V, scale), _smse_g(p_max, a0, d0, p_max, Q, V, scale)


@jit_inline
def _smse_entry(v, k, r, y, probs, w, use_p, has_w, f32, rs, inv_esc, S, Q, one_tied):
    """Entry k of a softmax_mse row from its stored (tie-tagged) e ``v``:
    ``(tied, p, t, w, d, u)`` with d = p - t and u = w d."""
    x = np.float64(v)
    tied = x > 0.0
    p = abs(x) * rs if f32 else (abs(x) * inv_esc) / S
    tk = np.float64(probs[r, k]) if use_p else (1.0 if k == y else 0.0)
    wk = np.float64(w[k]) if has_w else 1.0
    # a lone max: p_max - t = (1 - t) - Q, exact when p_max rounds to 1
    d = ((1.0 - tk) - Q) if (tied and one_tied) else (p - tk)
    return tied, p, tk, wk, d, wk * d


@jit_inline
def _smse_tail(zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, tau, e_rest, e2_rest):
    """:func:`_smse_tail_impl`, its loops compiled apart for the plain call
    (labels, no weights): with that known at compile time the loops carry no
    target/weight loads behind runtime branches, and vectorise."""
    if probs.shape[0] == 0 and w.size == 0:
        _smse_tail_impl(True, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, tau, e_rest, e2_rest)
    else:
        _smse_tail_impl(False, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, tau, e_rest, e2_rest)


@jit_inline
def _smse_tail_impl(plain, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, tau, e_rest, e2_rest):
    """softmax_mse from the stored (tie-tagged) e: loss and gradient of row r.

    With u = w (p - t), dl/dz_j = 2 p_j (u_j - sum_k p_k u_k); the bracket
    cancels to noise when most mass sits on classes tied with the max
    ([-40, 0, 0, 0], label 0).  Split off the tied set T (p = p_max) and use
    sum p = 1: u_j - sum p u = p_max A_j + (Q u_j - V), as in
    :func:`fastloss.reference.softmax_rows`.
    """
    C = zr.size
    has_w = False if plain else w.size > 0
    use_p = False if plain else probs.shape[0] > 0
    p_max = 1.0 / S
    Q = e_rest / S  # sum of p off T = 1 - tau p_max, never a difference
    one_tied = tau == 1.0
    l = 0.0
    V = 0.0  # sum over k not in T of p u
    W_T = 0.0  # sum over T of w
    WT_T = 0.0  # sum over T of w t
    if plain:  # w = 1, one-hot t: no loop (W_T = tau)
        W_T = tau
        xy = np.float64(wr[y])
        p_y = abs(xy) * rs if f32 else (abs(xy) * inv_esc) / S
        l, V, WT_T = _smse_plain_lv(xy, e2_rest, S, p_y, p_max, tau, Q)
    else:
        for k in range(C):
            tied, p, tk, wk, d, u = _smse_entry(wr[k], k, r, y, probs, w, use_p, has_w, f32, rs, inv_esc, S, Q,
                                                one_tied)
            l = add_reassoc(l, u * d)
            V = add_reassoc(V, 0.0 if tied else p * u)
            W_T = add_reassoc(W_T, wk if tied else 0.0)
            WT_T = add_reassoc(WT_T, wk * tk if tied else 0.0)
    loss[r] = l
    if not has_g:
        return
    # U_T = sum_T w (p_max - t) = (W_T/tau - WT_T) - Q W_T/tau: the first
    # difference is exact without weights when a tied class is the label
    w_bar = W_T / tau
    U_T = (w_bar - WT_T) - Q * w_bar
    if plain:  # tied entries take one of two per-row values
        g1, g0 = _smse_tied_grads(p_max, Q, tau, W_T, WT_T, V, scale, one_tied)
        for k in range(C):
            x = np.float64(wr[k])
            p = abs(x) * rs if f32 else (abs(x) * inv_esc) / S
            d = p - (1.0 if k == y else 0.0)
            g = _smse_g(p, tau * d - U_T, d, p_max, Q, V, scale)
            wr[k] = (g1 if k == y else g0) if x > 0.0 else g
        return
    for k in range(C):
        tied, p, tk, wk, d, u = _smse_entry(wr[k], k, r, y, probs, w, use_p, has_w, f32, rs, inv_esc, S, Q,
                                            one_tied)
        tw = tau * wk
        a_j = (p_max * (tw - W_T) - (tw * tk - WT_T)) if tied else (tau * u - U_T)
        wr[k] = _smse_g(p, a_j, u, p_max, Q, V, scale)


@jit_inline
def _rows(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc, r0, r1):
    """Rows ``r0:r1``; without a gradient they share one scratch work row."""
    has_g = grad.shape[0] > 0
    scratch = np.empty(0 if has_g else z.shape[1], z.dtype)
    for r in range(r0, r1):
        wr = grad[r] if has_g else scratch
        _row(op, z[r], r, labels, probs, w, ignore_index, eps, wr, has_g, loss, scale, esc)


_TB = 1024  # rows per block of the reduced-loss sum (a power of 4)


@jit
def rows_total(loss):
    """The float64 sum of the row losses in a fixed order (every kernel's
    return value): 4-way trees over blocks of up to :data:`_TB` rows, the
    block sums added in order.  It runs after every row is done, so the bits
    depend only on ``loss`` (any thread count, path or call form); in the
    kernel it saves NumPy's ~0.9 us reduce on small calls."""
    n = loss.size
    P = 4
    while P < n and P < _TB:  # the smallest tree holding a small call's rows
        P *= 4
    buf = np.empty(P)
    tmp = np.empty(P // 4)
    total = 0.0
    for b0 in range(0, n, P):
        nb = min(P, n - b0)
        if nb == P:  # a whole block is summed where it lies (no padding to write)
            total += tree_sum(loss[b0:b0 + P], P, tmp)
            continue
        for t in range(nb):
            buf[t] = loss[b0 + t]
        total += tree_sum(buf, nb, tmp)
    return total


@kernel
def softmax_serial(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc):
    """Rows in order on the calling thread, in the parallel kernel's blocks."""
    R, C = z.shape
    rb = max(1, 4096 // C)
    for b in range((R + rb - 1) // rb):
        _rows(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc,
              b * rb, min(R, (b + 1) * rb))
    return rows_total(loss)


@parallel_kernel
def softmax_parallel(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc):
    """Blocks of rows over numba's threads (a row's result is thread-independent)."""
    R, C = z.shape
    rb = max(1, 4096 // C)  # rows per task: amortises scheduling for small C
    for b in prange((R + rb - 1) // rb):
        _rows(op, z, labels, probs, w, ignore_index, eps, grad, loss, scale, esc,
              b * rb, min(R, (b + 1) * rb))
    return rows_total(loss)


# --------------------------------------------------------------------------
# Plain cross-entropy and softmax_mse on short rows (labels, no weights, no smoothing, C <=
# SMALL_C): per-row passes of a few classes are all overhead (scalar max,
# branches, a libm log1p: ~180 ns a row of 10).  Here a block of rows is
# processed class by class, each loop running *across rows*, so every pass
# is a vector loop over the block.  Rows that need the general treatment
# (NaN, +-inf max, ignored label) are redone by :func:`_row` afterwards.
# The gradient may alias z (in place): same code, same bits.
# --------------------------------------------------------------------------
SMALL_C = 32
_RB = 256  # rows per block: the block's float64 exp buffer stays in L1/L2
_SQRT_HALF_BITS = np.int64(0x3FE6A09E667F3BCD)
_MANT = np.int64(0x000FFFFFFFFFFFFF)


@jit
def log1p_pos(s):
    """``log1p(s)`` for finite ``s >= 0`` in plain arithmetic (vectorises), ~1 ulp.

    u = 1 + s = 2**k m with m in [sqrt(1/2), sqrt(2)): log u = k ln2 +
    log(1 + f), f = m - 1, by the atanh series in t = f / (2 + f) (fdlibm's
    reduction); the rounding of 1 + s is put back as (s - (u - 1)) / u, so a
    tiny s returns s.
    """
    u = np.float64(1.0 + s)
    c = (s - (u - 1.0)) / u
    bits = u.view(np.int64)
    k = (bits - _SQRT_HALF_BITS) >> 52  # u >= 1: k >= 0
    f = np.int64(bits - (k << 52)).view(np.float64) - 1.0
    t = f / (2.0 + f)
    z = t * t
    # q = 1/3 + z/5 + z^2/7 + ...: |t| <= 0.172, 10 terms reach 2**-60
    q = 1.0 / 21.0
    q = q * z + 1.0 / 19.0
    q = q * z + 1.0 / 17.0
    q = q * z + 1.0 / 15.0
    q = q * z + 1.0 / 13.0
    q = q * z + 1.0 / 11.0
    q = q * z + 1.0 / 9.0
    q = q * z + 1.0 / 7.0
    q = q * z + 1.0 / 5.0
    q = q * z + 1.0 / 3.0
    hf = 0.5 * f * f
    kd = np.float64(k)
    # log(1 + f) = f - hf + t (hf + 2 z q): small terms first, f and k ln2 last
    return kd * _LN2_HI - ((hf - (t * (hf + 2.0 * z * q) + (kd * _LN2_LO + c))) - f)


# per-row float64 scratch of a short-row block: rows of one (_NF, _RB) array
(_F_M, _F_ZY, _F_S1, _F_RS, _F_TAU, _F_EREST, _F_Q, _F_L, _F_V, _F_WT, _F_UT, _F_SS, _F_PM,
 _F_G1, _F_G0) = range(15)
_NF = 15
# per-row int32 scratch: rows of one (4, _RB) array
_I_AM, _I_NAN, _I_SPECIAL, _I_Y = range(4)


@jit_inline
def _small_front(z, labels, ignore_index, r0, nb, E, F, I):
    """Short-row block ``r0:r0+nb``: transpose into ``E``, max, argmax, flags.

    ``E`` is (C + 1, _RB) in z's dtype: rows 0..C-1 the block class-major,
    row C the row maxima.  Returns the number of rows flagged for :func:`_row`
    (NaN, +-inf max, ignored label).
    """
    C = z.shape[1]
    m, zy = F[_F_M], F[_F_ZY]
    am, nan, special = I[_I_AM], I[_I_NAN], I[_I_SPECIAL]
    mz = E[C]
    yb = I[_I_Y]
    for i in range(nb):
        y = labels[r0 + i]
        ok = 0 <= y < C
        yb[i] = y if ok else -1  # int32 labels (C <= SMALL_C): same-width lanes below
        zy[i] = np.float64(z[r0 + i, y if ok else 0])  # read before grad is written
    # class-major loops: contiguous stores (a row-major loop with the NaN
    # test in it stayed scalar: ~2.5 ns/element against ~0.3)
    zb = z[r0:r0 + nb]
    for k in range(C):
        for i in range(nb):
            E[k, i] = zb[i, k]
    # max pass: the first argmax (a NaN never wins a comparison; flagged),
    # in the block's dtype with int32 indices (same-width lanes vectorise
    # best: float32 0.13 ns/element against 0.35 in float64/int64)
    for i in range(nb):
        v = E[0, i]
        mz[i] = v
        am[i] = 0
        nan[i] = v != v
    for k in range(1, C):
        Ek = E[k]
        for i in range(nb):
            v = Ek[i]
            nan[i] |= v != v
            gt = v > mz[i]
            am[i] = k if gt else am[i]
            mz[i] = v if gt else mz[i]
    nspecial = 0
    for i in range(nb):
        m[i] = mz[i]
        # (yb < 0: a label outside [0, C), NaN in _row)
        bad = nan[i] != 0 or not (abs(m[i]) < _INF) or labels[r0 + i] == ignore_index or yb[i] < 0
        special[i] = bad
        nspecial += bad
    return nspecial


@jit_inline
def _small_exp(smse, E, F, C, nb):
    """e = exp(z - m) over the block, in place (float32 blocks: e * 2**100 in
    float32 arithmetic, as in :func:`_row`); softmax_mse stores tied classes
    (z == m) as +e and the rest as -e, as :func:`_row` does."""
    m = F[_F_M]
    mz = E[C]  # mz, not float32(m[i]): the conversion in the loop kept it scalar
    if is_f32(E):
        for k in range(C):
            Ek = E[k]
            for i in range(nb):
                x = Ek[i] - mz[i]
                e = exp_scaled_f32(x)
                Ek[i] = (e if x == 0.0 else -e) if smse else e
    else:
        for k in range(C):
            Ek = E[k]
            for i in range(nb):
                x = Ek[i] - m[i]
                e = exp(x)
                Ek[i] = (e if x == 0.0 else -e) if smse else e


@jit_inline
def _ce_small_block(z, labels, grad, loss, scale, r0, nb, E, F, I):
    """Plain cross-entropy of rows ``r0:r0+nb`` after :func:`_small_front`,
    each pass across rows (outputs of flagged rows are not meaningful)."""
    C = z.shape[1]
    f32 = is_f32(z)
    m, zy, s1, rs = F[_F_M], F[_F_ZY], F[_F_S1], F[_F_RS]
    am, special = I[_I_AM], I[_I_SPECIAL]
    _small_exp(False, E, F, C, nb)
    # S' = the sum without the argmax
    for i in range(nb):
        s1[i] = 0.0
    for k in range(C):
        for i in range(nb):
            s1[i] = add_reassoc(s1[i], 0.0 if k == am[i] else np.float64(E[k, i]))
    esc_inv = 2.0 ** -100 if f32 else 1.0
    # loss = log S - (z_y - m) with S = 1 + S': two terms >= 0, no cancellation
    for i in range(nb):
        s1[i] *= esc_inv  # exact: a power of 2
        S = 1.0 + s1[i]
        loss[r0 + i] = log1p_pos(s1[i]) - (zy[i] - m[i])
        rs[i] = 1.0 / S
    if grad.shape[0] == 0:  # loss only
        return
    # gradient (p - onehot(y)) scale with p = e / S, transposed back.
    # Flagged rows keep z (a select): in place, :func:`_row` still reads them
    for i in range(nb):
        rs[i] *= scale * esc_inv  # one float64 factor per row: a single rounding below
    for i in range(nb):
        sp = special[i]
        ri = rs[i]
        for k in range(C):
            grad[r0 + i, k] = z[r0 + i, k] if sp else np.float64(E[k, i]) * ri
    for i in range(nb):
        if special[i]:
            continue
        r = r0 + i
        y = labels[r]
        if y == am[i]:  # p_y - 1 = -S'/S, never formed as a difference
            grad[r, y] = -(s1[i] / (1.0 + s1[i])) * scale
        else:  # p_y <= 1/2 here: p_y - 1 has no cancellation
            grad[r, y] = np.float64(grad[r, y]) - scale  # p_y as stored above


@jit_inline
def _smse_small_block(z, labels, grad, loss, scale, r0, nb, E, F, I):
    """Plain softmax_mse (labels, no weights) of rows ``r0:r0+nb`` after
    :func:`_small_front`, each pass across rows: :func:`_row` and
    :func:`_smse_tail` with w = 1 (so W_T = tau and WT_T = [label tied])."""
    C = z.shape[1]
    f32 = is_f32(z)
    rs, tau, e_rest, Q, l, V, WT, UT = F[_F_RS], F[_F_TAU], F[_F_EREST], F[_F_Q], F[_F_L], F[_F_V], F[_F_WT], F[_F_UT]
    SS, PM = F[_F_SS], F[_F_PM]
    special, yb = I[_I_SPECIAL], I[_I_Y]
    _small_exp(True, E, F, C, nb)
    for i in range(nb):
        tau[i] = 0.0
        e_rest[i] = 0.0
    e2 = l  # the sum of e^2 over the untied classes, until l is formed
    for i in range(nb):
        e2[i] = 0.0
    for k in range(C):
        Ek = E[k]
        for i in range(nb):
            v = np.float64(Ek[i])
            tied = v > 0.0
            tau[i] += 1.0 if tied else 0.0  # exact: integer counts
            e_rest[i] = add_reassoc(e_rest[i], 0.0 if tied else -v)
            e2[i] = add_reassoc(e2[i], 0.0 if tied else v * v)
    esc_inv = 2.0 ** -100 if f32 else 1.0
    for i in range(nb):
        e_rest[i] *= esc_inv  # exact: a power of 2
        S = 1.0 + (e_rest[i] + (tau[i] - 1.0))  # S' from the tie count (tied e = 1 exactly), as in _row
        SS[i] = S
        PM[i] = 1.0 / S
        rs[i] = esc_inv / S  # float32 rows: p = e rs; float64 rows: p = e / S, as in _row
        Q[i] = e_rest[i] / S  # sum of p off the tied set, never a difference
        y = max(yb[i], 0)  # (flagged rows: any value)
        xy = np.float64(E[y, i])
        p_y = abs(xy) * rs[i] if f32 else abs(xy) / S
        li, V[i], WT[i] = _smse_plain_lv(xy, e2[i] * (esc_inv * esc_inv), S, p_y, PM[i], tau[i], Q[i])
        loss[r0 + i] = li
        # U_T = (W_T/tau - WT_T) - Q W_T/tau with W_T/tau = 1
        UT[i] = (1.0 - WT[i]) - Q[i]
    if grad.shape[0] == 0:
        return
    G1, G0 = F[_F_G1], F[_F_G0]
    for i in range(nb):  # tied entries: two per-row values (as in _smse_tail_impl)
        G1[i], G0[i] = _smse_tied_grads(PM[i], Q[i], tau[i], tau[i], WT[i], V[i], scale, tau[i] == 1.0)
    for k in range(C):
        Ek = E[k]
        for i in range(nb):
            x = np.float64(Ek[i])
            p = abs(x) * rs[i] if f32 else abs(x) / SS[i]
            is_y = k == yb[i]
            d = p - (1.0 if is_y else 0.0)
            g = _smse_g(p, tau[i] * d - UT[i], d, PM[i], Q[i], V[i], scale)
            Ek[i] = (G1[i] if is_y else G0[i]) if x > 0.0 else g
    for i in range(nb):
        sp = special[i]
        for k in range(C):
            grad[r0 + i, k] = z[r0 + i, k] if sp else E[k, i]


@jit_inline
def _small_rows(op, z, labels, ignore_index, grad, loss, scale, esc, b):
    """Block ``b`` of :data:`_RB` rows; flagged rows redone by the general :func:`_row`."""
    R, C = z.shape
    r0 = b * _RB
    nb = min(R, r0 + _RB) - r0
    E = np.empty((C + 1, _RB), z.dtype)  # the block class-major (then e, ...), and the maxima
    F = np.empty((_NF, _RB))
    I = np.empty((4, _RB), np.int32)
    ns = _small_front(z, labels, ignore_index, r0, nb, E, F, I)
    if op == CE:
        _ce_small_block(z, labels, grad, loss, scale, r0, nb, E, F, I)
    else:
        _smse_small_block(z, labels, grad, loss, scale, r0, nb, E, F, I)
    if ns:
        no_p = np.empty((0, 0), z.dtype)
        no_w = np.empty(0, z.dtype)
        has_g = grad.shape[0] > 0
        scratch = np.empty(0 if has_g else C, z.dtype)
        special = I[_I_SPECIAL]
        for i in range(nb):
            if special[i]:
                _row(op, z[r0 + i], r0 + i, labels, no_p, no_w, ignore_index, 0.0,
                     grad[r0 + i] if has_g else scratch, has_g, loss, scale, esc)


@kernel
def small_serial(op, z, labels, ignore_index, grad, loss, scale, esc):
    """Plain short-row ``op`` (CE or SMSE, a runtime value: it is branched on
    once per block), blocks in order on the calling thread."""
    for b in range((z.shape[0] + _RB - 1) // _RB):
        _small_rows(op, z, labels, ignore_index, grad, loss, scale, esc, b)
    return rows_total(loss)


@parallel_kernel
def small_parallel(op, z, labels, ignore_index, grad, loss, scale, esc):
    """Plain short-row ``op``, blocks over numba's threads."""
    for b in prange((z.shape[0] + _RB - 1) // _RB):
        _small_rows(op, z, labels, ignore_index, grad, loss, scale, esc, b)
    return rows_total(loss)
