"""Softmax kernels (softmax_cross_entropy, softmax_mse): one block per row.

A row is C strided entries ``z[base + k*inner]`` (``inner`` = product of the
axes after the class axis; 1 for the last axis), so any ``axis`` runs
without a transpose.  Threads stride over the row in chunks of the block
size, so any C works (2 ... 262,144 and beyond).  Passes, each ending in a
deterministic block reduction:

1. NaN count, max and first argmax;
2. S' = sum of exp(z - m) over all but the argmax; CE: A = sum a, its part
   over all but the argmax, B = sum a*(z - m); MSE: S' split at the near set
   N = {z - m >= -ln2/2} (sum of e over N but the argmax, and over the rest
   F) and, for the gradient, the sums over N of e w t, e w E, w t, w t E
   (E = expm1(z - m)) and, with class weights, e w.
   For CE with float32/float16 storage merged into pass 1 (online rescaling, see kernel_py);
3. CE: gradient (skipped without one); MSE: loss and V_F = sum over F of p w d;
4. MSE: gradient.

Formulas mirror :func:`fastloss.reference.softmax_rows`; math is float64.
In-place (grad is z) is safe: every pass that writes grad reads z[k] first
in the same thread, and all earlier reads are fenced by block reductions.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64, int64

from ._math import mul0
from ._reduce import SIM, USE_SHFL, block_ops, shared_size

OPS = ("softmax_cross_entropy", "softmax_mse")
#: cap on the launched rows per grid (blocks loop over rows beyond it)
MAX_ROW_BLOCKS = 8 if SIM else 1 << 20


def threads_for(C):
    """Block size for rows of C classes (a power of two; 32 under the simulator)."""
    if SIM:
        return 32
    return 64 if C <= 512 else (256 if C <= 8192 else 1024)


@functools.lru_cache(maxsize=None)
def kernel_py(op, has_labels, has_w, want_grad, threads, shfl, online=False):
    """Python source of one specialised row kernel (for jit or PTX).

    ``online`` merges passes 1 and 2 (one read of the row fewer): running
    max, S' and B are rescaled whenever a thread's max grows.  Each rescale
    rounds once in float64, so it is used for float32/float16 storage only,
    where up to C such roundings stay far below half an ulp of the result.
    """
    if op not in OPS:
        raise ValueError(f"unknown softmax op {op!r}")
    is_ce = op == "softmax_cross_entropy"
    online = online and is_ce  # MSE's near-set sums are formed in pass 2 only
    bsum, bmaxarg = block_ops(shfl)
    size = shared_size(threads)

    def softmax_kernel(z, labels, probs, w, ignore_index, eps, grad, loss, scale, C, inner):
        buf = cuda.shared.array(size, float64)
        ibuf = cuda.shared.array(size, int64)
        tid = cuda.threadIdx.x
        R = z.size // C
        eps_c = eps / C
        r = cuda.blockIdx.x
        while r < R:
            base = (r // inner) * C * inner + r % inner
            y = -1
            valid = True
            if has_labels:
                y = labels[r]
                valid = y != ignore_index
            nan = 0.0
            best = -math.inf
            am = C
            s1 = 0.0
            A = 0.0
            B = 0.0
            Ar = 0.0  # CE: sum of a over all but the (thread's, then row's) argmax
            a_am = 0.0  # CE online: a at this thread's running argmax
            # MSE: S' = s1 (near set N but the argmax) + E_r (the rest, F); sums
            # over N of e w t, e w E, e w, w t, w t E (E = expm1(z - m))
            E_r = 0.0
            An = 0.0
            Bn = 0.0
            Wn = 0.0
            WT = 0.0
            BT = 0.0
            k = tid
            while k < C:
                v = float64(z[base + k * inner])
                if v != v:
                    nan += 1.0
                    k += threads
                    continue
                a = 0.0
                if online and is_ce:
                    t = _target(has_labels, k, y, probs, base + k * inner, eps, eps_c)
                    a = t * float64(w[k]) if has_w else t
                if v > best:
                    if online:
                        Ar += a_am  # the old argmax joins the rest
                        a_am = a
                        # the old max joins S' and everything is rescaled to the new max
                        s1 = (s1 + 1.0) * math.exp(best - v) if best > -math.inf else 0.0
                        B -= mul0(A, v - best)  # B <= 0 only grows in magnitude: no cancellation
                    best = v
                    am = k
                elif online:
                    s1 += _exp_rest(v, best)
                    Ar += a
                if online and is_ce:
                    A += a
                    B += mul0(a, _shift_rest(v, best))
                k += threads
            nan = bsum(nan, buf)
            m, am_row = bmaxarg(best, am, buf, ibuf)
            inf_row = m == math.inf  # limit: equal mass on the +inf entries
            if online:
                # merge per-thread states at their own max into the row's max
                f = 1.0 if best == m else math.exp(best - m)
                own = 1.0 if (am != am_row and best > -math.inf) else 0.0  # a tied max is in S'
                s1 = bsum((s1 + own) * f, buf)
                if is_ce:  # B first: its rescale needs this thread's own A
                    B = bsum(B if best == m else B - mul0(A, m - best), buf)
                    A = bsum(A, buf)
                    # the row's argmax is the running argmax of the thread holding it
                    Ar = bsum(Ar if am == am_row else Ar + a_am, buf)
            am = am_row
            if nan > 0 or m == -math.inf or not valid:
                # NaN row -> NaN; all -inf (masked) or ignored row -> 0
                out = math.nan if nan > 0 else 0.0
                if tid == 0:
                    loss[r] = out
                if want_grad:
                    k = tid
                    while k < C:
                        grad[base + k * inner] = out
                        k += threads
                r += cuda.gridDim.x
                continue
            if not online:
                # pass 2: S' (all but the argmax), and CE's A = sum a, B = sum a (z - m)
                k = tid
                while k < C:
                    v = float64(z[base + k * inner])
                    sh = _shift(v, m, inf_row)
                    e = math.exp(sh)
                    t = _target(has_labels, k, y, probs, base + k * inner, eps, eps_c)
                    wk = float64(w[k]) if has_w else 1.0
                    if is_ce:
                        if k != am:
                            s1 += e  # S = 1 + S': log1p(S') keeps S' digits
                        a = t * wk
                        A += a
                        if k != am:
                            Ar += a
                        if sh == -math.inf and v > -math.inf and m < math.inf:
                            # v - m overflowed (|v|, |m| ~ 1e308): a (v - m) = 2 a (v/2 - m/2)
                            B += 2.0 * mul0(a, 0.5 * v - 0.5 * m)
                        else:
                            B += mul0(a, sh)  # a zero target masks a -inf class
                    elif _near(sh):  # the argmax is in N (sh = 0)
                        if k != am:
                            s1 += e
                        if want_grad:
                            E = math.expm1(sh)  # to an ulp; 0 on ties
                            wt = wk * t
                            An += e * wt
                            Bn += (e * wk) * E
                            WT += wt
                            BT += wt * E
                            if has_w:
                                Wn += e * wk
                    else:
                        E_r += e
                    k += threads
                s1 = bsum(s1, buf)
                if is_ce:
                    A = bsum(A, buf)
                    B = bsum(B, buf)
                    Ar = bsum(Ar, buf)
                else:
                    E_r = bsum(E_r, buf)
                    if want_grad:
                        An = bsum(An, buf)
                        Bn = bsum(Bn, buf)
                        WT = bsum(WT, buf)
                        BT = bsum(BT, buf)
                        if has_w:
                            Wn = bsum(Wn, buf)
            Pn = 0.0
            if not is_ce:
                Pn = 1.0 + s1  # S sum_N p: the argmax's 1 and the rest of N
                s1 += E_r  # S' = (N but the argmax) + F, all terms >= 0
            S = 1.0 + s1
            q = s1 / S  # 1 - p_argmax, never formed as a difference
            if is_ce and tid == 0:
                # A log S - sum a (z - m): two non-negative terms, log1p keeps S' digits
                loss[r] = A * math.log1p(s1) - B
            # pass 3: CE gradient; MSE loss and V_F = sum over F of p u
            lsum = 0.0
            V_F = 0.0
            k = tid if (want_grad or not is_ce) else C  # CE loss alone needs no third pass
            while k < C:
                v = float64(z[base + k * inner])
                sh = _shift(v, m, inf_row)
                p = math.exp(sh) / S
                t = _target(has_labels, k, y, probs, base + k * inner, eps, eps_c)
                wk = float64(w[k]) if has_w else 1.0
                if is_ce:
                    a = t * wk
                    # argmax: p*A - a as sum_{k != am} a - A*q, exact when p rounds to 1
                    g = Ar - A * q if k == am else p * A - a
                    grad[base + k * inner] = g * scale
                else:
                    near = _near(sh)
                    E = math.expm1(sh) if near else 0.0
                    d = _mse_d(p, t, E, s1, S, near)
                    u = wk * d
                    lsum += u * d
                    if not near:
                        V_F += p * u
                k += threads
            if not is_ce:
                lsum = bsum(lsum, buf)
                if tid == 0:
                    loss[r] = lsum
                if want_grad:
                    V_F = bsum(V_F, buf)
                    # dl/dz_j = 2 p_j G_j, G_j = sum_k p_k (u_j - u_k): summing then
                    # subtracting cancels to noise where u_j ~ u_k for a heavy k, at
                    # or just below the max ([-6, 0, 2^-6]; -1e-30 next to 0, where
                    # e rounds to 1).  On N, p_k = p_max (1 + E_k): p_j - p_k =
                    # p_max (E_j - E_k) keeps its digits and the 1s cancel exactly
                    # (as in fastloss.reference):
                    #   j in N: G_j = p_max ((w_j P - W) + (w_j E_j P - B))
                    #                 - (w_j t_j P - A) + (Q u_j - V_F)
                    #   j in F: G_j = u_j - (V_N + V_F),
                    #           V_N = p_max ((W - WT P) + (B - BT P)) - A Q
                    # P, W, A, B: sums over N of p, p w, p w t, p w E; Q = sum_F p.
                    p_max = 1.0 / S
                    P = Pn / S
                    Q = E_r / S  # 1 - P, never formed as a difference
                    A = An / S
                    B = Bn / S
                    W = Wn / S
                    if has_w:
                        V_N = (W - WT * P) + (B - BT * P)
                    else:  # W = P: w_j P - W = 0, W - WT P = P (1 - WT)
                        V_N = P * (1.0 - WT) + (B - BT * P)
                    V = (p_max * V_N - A * Q) + V_F
                    # pass 4: the gradient
                    k = tid
                    while k < C:
                        v = float64(z[base + k * inner])
                        sh = _shift(v, m, inf_row)
                        p = math.exp(sh) / S
                        t = _target(has_labels, k, y, probs, base + k * inner, eps, eps_c)
                        wk = float64(w[k]) if has_w else 1.0
                        near = _near(sh)
                        E = math.expm1(sh) if near else 0.0
                        u = wk * _mse_d(p, t, E, s1, S, near)
                        if near:
                            G = (wk * E) * P - B
                            if has_w:
                                G += wk * P - W
                            G = p_max * G - ((wk * t) * P - A) + (Q * u - V_F)
                        else:
                            G = u - V
                        grad[base + k * inner] = (2.0 * p * G) * scale
                        k += threads
            r += cuda.gridDim.x

    return softmax_kernel


@cuda.jit(device=True, inline=True)
def _shift(v, m, inf_row):
    """z - m (<= 0); in a +inf row: 0 at the +inf entries, -inf elsewhere."""
    if inf_row:
        return 0.0 if v == math.inf else -math.inf
    return v - m  # exact near the max (Sterbenz)


#: softmax_mse's near set N: z - m >= -ln(2)/2, where exp(z - m) >= 1/sqrt(2)
_HALF_LN2 = 0.5 * math.log(2.0)


@cuda.jit(device=True, inline=True)
def _near(sh):
    """Whether sh = z - m puts the class in softmax_mse's near set N.

    The one membership rule of every pass (each recomputes the same sh)."""
    return sh >= -_HALF_LN2


@cuda.jit(device=True, inline=True)
def _mse_d(p, t, E, s1, S, near):
    """p - t; on N with t >= 1/2, (1 - t) - (S' - E)/S: 1 - p = (S' - E)/S
    with both terms >= 0 keeps the digits p - t rounds off ([0, -40], label 0)."""
    return (1.0 - t) - (s1 - E) / S if (near and t >= 0.5) else p - t


@cuda.jit(device=True, inline=True)
def _exp_rest(v, best):
    """exp(v - best) for v <= best, a running max: 1 at a tie (also +inf), 0 at -inf."""
    if v == -math.inf:
        return 0.0
    return 1.0 if v == best else math.exp(v - best)


@cuda.jit(device=True, inline=True)
def _shift_rest(v, best):
    """v - best for v <= best, a running max: 0 at a tie (also +inf), -inf at -inf."""
    if v == -math.inf:
        return -math.inf
    return 0.0 if v == best else v - best


@cuda.jit(device=True, inline=True)
def _target(has_labels, k, y, probs, idx, eps, eps_c):
    """Target probability t_k (one-hot or given), label-smoothed by eps."""
    t = (1.0 if k == y else 0.0) if has_labels else float64(probs[idx])
    return t * (1.0 - eps) + eps_c


@functools.lru_cache(maxsize=None)
def _kernel(op, has_labels, has_w, want_grad, threads, online):
    return cuda.jit(kernel_py(op, has_labels, has_w, want_grad, threads, USE_SHFL, online))


def softmax_dev(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale, C, inner=1, stream=0):
    """Run ``op`` on flat device arrays: rows of C entries ``inner`` apart.

    ``labels`` (R,) any int dtype or None; ``probs`` laid out like ``z`` or
    None; ``w`` (C,) or None; ``grad`` like ``z`` or None; ``loss`` (R,) any
    float dtype, always filled.  Queued on ``stream``.
    """
    R = z.size // C if C else 0
    if R == 0:
        return
    threads = threads_for(C)
    # one read of the row fewer where float64 accumulation makes rescaling harmless
    # (CE only: MSE's near-set sums would need rescaling too)
    online = z.dtype != np.float64 and op == "softmax_cross_entropy"
    kern = _kernel(op, labels is not None, w is not None, grad is not None, threads, online)
    dummy_f = cuda.device_array(1, dtype=z.dtype, stream=stream)
    dummy_i = cuda.device_array(1, dtype=np.int64, stream=stream)
    kern[min(R, MAX_ROW_BLOCKS), threads, stream](
        z, dummy_i if labels is None else labels, dummy_f if probs is None else probs,
        dummy_f if w is None else w, int(ignore_index), float(smoothing),
        dummy_f if grad is None else grad, loss, float(scale), int(C), int(inner))


def softmax_rows(op, z, labels, probs, w, ignore_index, smoothing, grad, loss, scale):
    """Host kernel interface (see :mod:`fastloss.reference`): copy in, run, copy out."""
    R, C = z.shape
    dz = cuda.to_device(z.reshape(-1))
    dl = None if labels is None else cuda.to_device(labels)
    dp = None if probs is None else cuda.to_device(probs.reshape(-1))
    dw = None if w is None else cuda.to_device(w)
    dg = None if grad is None else cuda.device_array(z.size, dtype=grad.dtype)
    dloss = cuda.device_array(R, dtype=np.float64)
    softmax_dev(op, dz, dl, dp, dw, ignore_index, smoothing, dg, dloss, scale, C)
    dloss.copy_to_host(loss)
    if dg is not None:
        grad[...] = dg.copy_to_host().reshape(R, C)  # grad may be z: z no longer needed
    return float(np.add.reduce(loss))


__all__ = ["OPS", "kernel_py", "softmax_dev", "softmax_rows", "threads_for"]
