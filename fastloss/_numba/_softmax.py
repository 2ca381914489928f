"""Softmax row losses: a max pass, an exp pass, a gradient pass per row.

Each row is first copied into its work row (the gradient row itself, or a
scratch row when no gradient is asked) during the max pass; every later pass
reads and writes that one row, which stays in cache.  So the gradient may
alias ``z``, and because a loop that reads and writes the same array needs
no aliasing check, LLVM takes the same vectorised loop (the same summation
order) in place or not: results are bitwise identical either way.  The exp
pass stores ``exp(z - m)`` while it accumulates ``S'`` (the exp-sum without
the first argmax) and the loss terms; the last pass rescales in place.
softmax_mse stores ``expm1(z - m)`` instead for the classes near the max
(sign-tagged), whose probability differences need it (:func:`_smse_tail_impl`).
Formulas mirror :func:`fastloss.reference.softmax_rows`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import jit, jit_inline, kernel, parallel_kernel
from ._math import (_LN2_HI, _LN2_LO, add_reassoc, exp, exp_em1_scaled_f32, exp_pm, exp_scaled_f32, is_f32, mul0,
                    tree_sum)

CE, SMSE = 0, 1
_NAN = np.nan
_INF = np.inf
_FIND = 64  # argmax search: test 64 entries at once, then scan that block
_KMIN = np.int64(-(2 ** 63))
_MASK32 = np.int64(0x7FFFFFFF)
_MASK64 = np.int64(0x7FFFFFFFFFFFFFFF)
_SHORT = 64  # rows shorter than this take the scalar max pass (same result)
# softmax_mse's near set N: z - m >= _NEAR, just inside -ln2/2 so that the
# exp reduction keeps r = z - m there (k = 0) and its series is expm1(z - m)
_NEAR = -0.3465
_NEAR32 = np.float32(_NEAR)  # float32 rows compare in float32 (16 lanes)
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
    # softmax_mse: the near set N = {z - m >= _NEAR} stores E = expm1(z - m)
    # (sign bit set, ties -0.0), the far classes e (>= +0): see _smse_tail_impl
    SN = 0.0  # sum of e over N (>= 1: the argmax's e = 1)
    SEE = 0.0  # sum of e E over N
    SF = 0.0  # sum of e over F
    SF2 = 0.0  # sum of e^2 over F (float32 rows; float64: _smse_tail_impl)
    sums = use_p or eps != 0.0
    f32 = is_f32(zr)  # constant: shorter exp series for float32 rows
    if op == SMSE and f32 and not inf_row:
        # float32 rows: exp and expm1 in float32 (16 lanes), the sums in
        # float64 in a second pass (see the CE branch below)
        m32 = np.float32(m)
        for k in range(C):
            x = np.float32(wr[k]) - m32
            e, em1 = exp_em1_scaled_f32(x)
            wr[k] = -abs(em1) if x >= _NEAR32 else e
        for k in range(C):
            v = np.float64(wr[k])
            near = _tag(v)
            en = (1.0 + v) if near else 0.0  # near e = 1 + E
            ef = 0.0 if near else v
            SN = add_reassoc(SN, en)
            SEE = add_reassoc(SEE, en * v)
            SF = add_reassoc(SF, ef)
            SF2 = add_reassoc(SF2, ef * ef)  # e 2**100: v^2 <= 2**200
        SF *= 1.0 / esc  # exact: a power of 2
        SF2 *= 1.0 / (esc * esc)
        # S' (all but the argmax, e = 1): SN - 1 >= 0.7 (|N| - 1) (near
        # e >= 1/sqrt(2)), exact for a lone max
        s1 = SF + (SN - 1.0)
    elif op == SMSE:  # separate loops: op is a runtime value, branches inside stop vectorising
        for k in range(C):
            sh = _shift(np.float64(wr[k]), m, inf_row)
            e, em1 = exp_pm(sh, f32)  # k = 0 on N: pm = expm1(z - m)
            near = sh >= _NEAR
            wr[k] = -abs(em1) if near else e * esc  # float32 rows: +inf rows only (e = 0 or near)
            en = e if near else 0.0
            SN = add_reassoc(SN, en)
            SEE = add_reassoc(SEE, en * em1)
            SF = add_reassoc(SF, 0.0 if near else e)  # (SF2: see _smse_tail_impl)
        s1 = SF + (SN - 1.0)
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
    _smse_tail(zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, s1, SN, SEE, SF, SF2)


@jit
def _tag(v):
    """Whether a stored softmax_mse entry is near the max (its sign bit: near
    entries hold E = expm1(z - m) <= 0, ties -0.0; far ones e >= +0)."""
    return math.copysign(1.0, v) < 0.0  # (a bit view here kept the loops scalar)


@jit
def _smse_p(x, near, f32, rs, inv_esc, S, p_max):
    """p from a stored entry ``x``: p_max (1 + E) near the max, e / S off it."""
    return p_max * (1.0 + x) if near else (x * rs if f32 else (x * inv_esc) / S)


@jit
def _smse_plain_row(xy, p_y, s1, S, p_max, P, Q, SN, SEE, SF2, scale):
    """softmax_mse of a plain row (w = 1, one-hot t) from its sums, no loop:
    ``(l, B, A, V_F, VV, g_y)``.

    ``xy`` is the label's stored entry, ``p_y`` its probability; SN, SEE the
    sums of e, e E over N, SF2 that of e^2 over F.  With p = p_max e:
    B = sum_N p E = p_max SEE, sum_N p^2 = p_max^2 (SN + SEE) (e = 1 + E),
    A = [y in N] p_y, V_F = sum_F p (p - t), VV = V_N + V_F = sum p u, and
    g_y the label's gradient (the loops take every entry as t = 0).  Sums
    that drop the label from N are formed without it (SN - e_y >= 0.7 per
    other near class), never as differences of small results, so a lone max
    stays exact.
    """
    B = p_max * SEE
    P2F = SF2 / (S * S)  # sum_F p^2
    if _tag(xy):
        E_y = xy
        e_y = 1.0 + E_y
        d_y = -((s1 - E_y) / S)  # 1 - p_y = (S' - E_y) / S: both terms >= 0
        A = p_y
        V_F = P2F
        # the other near classes' p^2, then d_y^2
        l = P2F + ((p_max * p_max) * ((SN - e_y) + (SEE - e_y * E_y)) + d_y * d_y)
        V_N = p_max * (B - E_y * P) - A * Q  # W - WT P = P (1 - 1) = 0
        # t_y P - A = P - p_y, the other near classes' p
        G_y = (p_max * (E_y * P - B) - p_max * (SN - e_y)) + (Q * d_y - V_F)
    else:
        A = 0.0
        d_y = p_y - 1.0  # p_y < 1/2 off N: no cancellation
        V_F = P2F - p_y
        # sum_F (p - t)^2 = P2F - p_y^2 + (p_y - 1)^2
        l = (P2F + (1.0 - 2.0 * p_y)) + (p_max * p_max) * (SN + SEE)
        V_N = p_max * (P + B)
        G_y = d_y - (V_N + V_F)
    return l, B, A, V_F, V_N + V_F, ((2.0 * p_y) * G_y) * scale


@jit
def _smse_plain_g(x, f32, rs, inv_esc, S, p_max, P, B, A, Q, V_F, VV, scale):
    """Gradient of a plain row's entry with t = 0 from its stored ``x`` (p as
    in :func:`_smse_p`): near G = p_max (E P - B) + A + (Q p - V_F), far
    G = p - VV (see :func:`_smse_tail_impl`)."""
    near = _tag(x)
    p = _smse_p(x, near, f32, rs, inv_esc, S, p_max)
    G = ((p_max * (x * P - B) + A) + (Q * p - V_F)) if near else (p - VV)
    return ((2.0 * p) * G) * scale


@jit
def _smse_entry(v, tk, wk, f32, rs, inv_esc, S, s1, p_max):
    """An entry of a softmax_mse row from its stored ``v``, target ``tk`` and
    weight ``wk``: ``(near, x, p, d, u)`` with d = p - t, u = w d (x: E if
    near, else e)."""
    x = np.float64(v)
    near = _tag(x)
    p = _smse_p(x, near, f32, rs, inv_esc, S, p_max)
    # a heavy target near the max: p - t = (1 - t) - (1 - p), 1 - p =
    # (S' - E) p_max with both terms >= 0 (exact when p rounds to 1)
    d = ((1.0 - tk) - (s1 - x) * p_max) if (near & (tk >= 0.5)) else (p - tk)
    return near, x, p, d, wk * d


@jit
def _smse_grad(near, x, p, wk, u, wtP, P, W, A, B, Q, V_F, VV, p_max, scale):
    """The gradient of an entry (:func:`_smse_tail_impl`'s G_j; ``wtP`` = (w t) P)."""
    gn = ((wk * x) * P - B) + (wk * P - W)
    gn = (p_max * gn - (wtP - A)) + (Q * u - V_F)
    return ((2.0 * p) * (gn if near else u - VV)) * scale


_PLAIN, _LABELS, _PROBS = 0, 1, 2  # softmax_mse tail variants (compile-time)


@jit_inline
def _smse_tail(zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, s1, SN, SEE, SF, SF2):
    """:func:`_smse_tail_impl`, its loops compiled apart for the plain call
    (labels, no weights), weighted labels and probabilities: with that known
    at compile time the loops carry no target/weight loads behind runtime
    branches, and no sums the variant does not need."""
    if probs.shape[0] > 0:
        _smse_tail_impl(_PROBS, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, s1, SN, SEE, SF,
                        SF2)
    elif w.size == 0:
        _smse_tail_impl(_PLAIN, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, s1, SN, SEE, SF,
                        SF2)
    else:
        _smse_tail_impl(_LABELS, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, s1, SN, SEE, SF,
                        SF2)


@jit_inline
def _smse_tail_impl(mode, zr, r, y, probs, w, wr, has_g, loss, scale, f32, rs, inv_esc, S, s1, SN, SEE, SF, SF2):
    """softmax_mse from the stored entries: loss and gradient of row r.

    With u = w (p - t), dl/dz_j = 2 p_j G_j, G_j = sum_k p_k (u_j - u_k); the
    sum cancels to noise where u_j ~ u_k for a heavy class k at or just below
    the max ([-40, 0, 0, 0]; [-6, 0, 2^-6]).  So, as in
    :func:`fastloss.reference.softmax_rows`: on the near set N, p_k =
    p_max e_k with e_k = 1 + E_k, E_k = expm1(z_k - m) stored to an ulp, so
    p_j - p_k = p_max (E_j - E_k) keeps its digits; with P, W, A, B the sums
    over N of p, p w, p w t, p w E, WT, BT those of w t, w t E, and Q, V_F
    the sums over F of p, p u:
      j in N:  G_j = p_max ((w_j P - W) + (w_j E_j P - B)) - (w_j t_j P - A) + (Q u_j - V_F)
      j in F:  G_j = u_j - (V_N + V_F),  V_N = p_max ((W - WT P) + (B - BT P)) - A Q
    ``SF2`` (the sum of e^2 over F, plain rows only) comes from the float32
    rows' second exp-pass loop; float64 rows sum it here (as a fourth sum in
    their exp loop it slowed that loop ~25 %; +inf rows have no far mass).
    """
    C = zr.size
    plain = mode == _PLAIN
    use_p = mode == _PROBS
    has_w = mode == _LABELS or (use_p and w.size > 0)
    p_max = 1.0 / S
    Q = SF / S  # sum of p over F = 1 - P, never a difference
    P = p_max * SN  # sum of p over N
    if plain:  # w = 1, one-hot t: sums from the exp pass, no loop but e^2
        if not f32:
            for k in range(C):
                v = np.float64(wr[k])
                ef = 0.0 if _tag(v) else v
                SF2 = add_reassoc(SF2, ef * ef)
        xy = np.float64(wr[y])
        p_y = _smse_p(xy, _tag(xy), f32, rs, inv_esc, S, p_max)
        l, B, A, V_F, VV, g_y = _smse_plain_row(xy, p_y, s1, S, p_max, P, Q, SN, SEE, SF2, scale)
        loss[r] = l
        if not has_g:
            return
        for k in range(C):
            x = np.float64(wr[k])
            wr[k] = _smse_plain_g(x, f32, rs, inv_esc, S, p_max, P, B, A, Q, V_F, VV, scale)
        wr[y] = g_y
        return
    # weighted labels: the loops take t = 0 and skip the label's loss and
    # V_F terms, added (and its gradient written) after them: one-hot t
    # costs no loads or selects per entry, WT and BT need no sums
    l = 0.0
    W = 0.0
    B = 0.0
    WT = 0.0
    BT = 0.0
    V_F = 0.0
    for k in range(C):
        tk = np.float64(probs[r, k]) if use_p else 0.0
        wk = np.float64(w[k]) if has_w else 1.0
        near, x, p, d, u = _smse_entry(wr[k], tk, wk, f32, rs, inv_esc, S, s1, p_max)
        ky = False if use_p else k == y
        l = add_reassoc(l, 0.0 if ky else u * d)
        pw = p * wk
        W = add_reassoc(W, pw if near else 0.0)  # (not used without weights: W = P)
        B = add_reassoc(B, pw * x if near else 0.0)
        V_F = add_reassoc(V_F, 0.0 if (near | ky) else p * u)
        if use_p:
            wt = wk * tk
            WT = add_reassoc(WT, wt if near else 0.0)
            BT = add_reassoc(BT, wt * x if near else 0.0)
    # the label's entry (read before the gradient loop overwrites it)
    w_y = 1.0 if use_p else np.float64(w[y])
    near_y, x_y, p_y, d_y, u_y = _smse_entry(0.0 if use_p else wr[y], 1.0, w_y, f32, rs, inv_esc, S, s1, p_max)
    if not use_p:
        l += u_y * d_y
        V_F += 0.0 if near_y else p_y * u_y
        wt = w_y * 1.0
        WT = wt if near_y else 0.0
        BT = wt * x_y if near_y else 0.0
    loss[r] = l
    if not has_g:
        return
    # A = sum_N p w t = p_max (WT + BT): a lone near class j gets A = (w t)_j P
    # to the bit, so w_j t_j P - A below is exactly 0
    A = p_max * (WT + BT)
    if has_w:
        V_N = (W - WT * P) + (B - BT * P)
    else:  # W = P: w_j P - W = 0 below, W - WT P = P (1 - WT)
        W = P
        V_N = P * (1.0 - WT) + (B - BT * P)
    V_N = p_max * V_N - A * Q
    VV = V_N + V_F
    for k in range(C):
        tk = np.float64(probs[r, k]) if use_p else 0.0
        wk = np.float64(w[k]) if has_w else 1.0
        near, x, p, d, u = _smse_entry(wr[k], tk, wk, f32, rs, inv_esc, S, s1, p_max)
        wr[k] = _smse_grad(near, x, p, wk, u, (wk * tk) * P if use_p else 0.0, P, W, A, B, Q, V_F, VV, p_max,
                           scale)
    if not use_p:
        wr[y] = _smse_grad(near_y, x_y, p_y, w_y, u_y, (w_y * 1.0) * P, P, W, A, B, Q, V_F, VV, p_max, scale)


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
(_F_M, _F_ZY, _F_S1, _F_RS, _F_SN, _F_SEE, _F_SF, _F_SF2, _F_SS, _F_PM, _F_P, _F_B, _F_A, _F_Q,
 _F_VF, _F_VV, _F_GY) = range(17)
_NF = 17
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
    float32 arithmetic, as in :func:`_row`); softmax_mse stores its near
    classes (z - m >= _NEAR) as -|expm1(z - m)| instead, as :func:`_row` does."""
    m = F[_F_M]
    mz = E[C]  # mz, not float32(m[i]): the conversion in the loop kept it scalar
    if is_f32(E):
        for k in range(C):
            Ek = E[k]
            for i in range(nb):
                x = Ek[i] - mz[i]
                e, em1 = exp_em1_scaled_f32(x)
                Ek[i] = (-abs(em1) if x >= _NEAR32 else e) if smse else e
    else:
        for k in range(C):
            Ek = E[k]
            for i in range(nb):
                x = Ek[i] - m[i]
                e, em1 = exp_pm(x)
                Ek[i] = (-abs(em1) if x >= _NEAR else e) if smse else e


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
    :func:`_small_front`, each pass across rows: :func:`_row` and the plain
    :func:`_smse_tail_impl` (the near set N, sums from the exp pass)."""
    C = z.shape[1]
    f32 = is_f32(z)
    s1, rs, SN, SEE, SF, SF2 = F[_F_S1], F[_F_RS], F[_F_SN], F[_F_SEE], F[_F_SF], F[_F_SF2]
    SS, PM, P, B, A, Q = F[_F_SS], F[_F_PM], F[_F_P], F[_F_B], F[_F_A], F[_F_Q]
    VF, VV, GY = F[_F_VF], F[_F_VV], F[_F_GY]
    yb = I[_I_Y]
    _small_exp(True, E, F, C, nb)
    for i in range(nb):
        SN[i] = 0.0
        SEE[i] = 0.0
        SF[i] = 0.0
        SF2[i] = 0.0
    for k in range(C):
        Ek = E[k]
        for i in range(nb):
            v = np.float64(Ek[i])
            near = _tag(v)
            en = (1.0 + v) if near else 0.0  # near e = 1 + E
            ef = 0.0 if near else v
            SN[i] = add_reassoc(SN[i], en)
            SEE[i] = add_reassoc(SEE[i], en * v)
            SF[i] = add_reassoc(SF[i], ef)
            SF2[i] = add_reassoc(SF2[i], ef * ef)
    esc_inv = 2.0 ** -100 if f32 else 1.0
    for i in range(nb):
        SF[i] *= esc_inv  # exact: powers of 2
        SF2[i] *= esc_inv * esc_inv
        s1[i] = SF[i] + (SN[i] - 1.0)  # as in _row
        S = 1.0 + s1[i]
        SS[i] = S
        PM[i] = 1.0 / S
        rs[i] = esc_inv / S  # float32 rows: p = e rs; float64 rows: p = e / S, as in _row
        Q[i] = SF[i] / S
        P[i] = PM[i] * SN[i]
        y = max(yb[i], 0)  # (flagged rows: any value)
        xy = np.float64(E[y, i])
        p_y = _smse_p(xy, _tag(xy), f32, rs[i], 1.0, S, PM[i])
        loss[r0 + i], B[i], A[i], VF[i], VV[i], GY[i] = _smse_plain_row(
            xy, p_y, s1[i], S, PM[i], P[i], Q[i], SN[i], SEE[i], SF2[i], scale)
    if grad.shape[0] == 0:
        return
    for k in range(C):
        Ek = E[k]
        for i in range(nb):
            x = np.float64(Ek[i])
            g = _smse_plain_g(x, f32, rs[i], 1.0, SS[i], PM[i], P[i], B[i], A[i], Q[i], VF[i], VV[i], scale)
            Ek[i] = GY[i] if k == yb[i] else g
    special = I[_I_SPECIAL]
    for i in range(nb):
        sp = special[i]
        for k in range(C):
            grad[r0 + i, k] = z[r0 + i, k] if sp else E[k, i]


# flagged short rows are few: a real call (its array refcounts cost ~40 ns)
# keeps _row's body out of the short-row kernels (compile time)
_row_call = jit(_row.py_func)


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
                _row_call(op, z[r0 + i], r0 + i, labels, no_p, no_w, ignore_index, 0.0,
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
