"""Softmax kernels (softmax_cross_entropy, softmax_mse): one block per row.

A row is C strided entries ``z[base + k*inner]`` (``inner`` = product of the
axes after the class axis; 1 for the last axis), so any ``axis`` runs
without a transpose.  Threads stride over the row in chunks of the block
size, so any C works (2 ... 262,144 and beyond).  Passes, each ending in a
deterministic block reduction:

1. NaN count, max and first argmax;
2. S' = sum of exp(z - m) over all but the argmax; CE: A = sum a, its part
   over all but the argmax, B = sum a*(z - m); MSE: the classes tied with
   the max (count, sum w, sum w t) and the sum of e over the rest.
   For CE with float32/float16 storage merged into pass 1 (online rescaling, see kernel_py);
3. CE: gradient (skipped without one); MSE: loss and V = sum over the untied classes of p w d;
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
    online = online and is_ce  # MSE's tied-class sums (T) are formed in pass 2 only
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
            tau = 0.0  # MSE: classes tied with the max (set T) ...
            E_r = 0.0  # ... sum of e over the rest, W_T = sum_T w, WT_T = sum_T w t
            W_T = 0.0
            WT_T = 0.0
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
                    if k != am:
                        s1 += e  # S = 1 + S': log1p(S') keeps S' digits
                    t = _target(has_labels, k, y, probs, base + k * inner, eps, eps_c)
                    wk = float64(w[k]) if has_w else 1.0
                    if is_ce:
                        a = t * wk
                        A += a
                        if k != am:
                            Ar += a
                        if sh == -math.inf and v > -math.inf and m < math.inf:
                            # v - m overflowed (|v|, |m| ~ 1e308): a (v - m) = 2 a (v/2 - m/2)
                            B += 2.0 * mul0(a, 0.5 * v - 0.5 * m)
                        else:
                            B += mul0(a, sh)  # a zero target masks a -inf class
                    elif sh == 0.0:
                        tau += 1.0
                        W_T += wk
                        WT_T += wk * t
                    else:
                        E_r += e
                    k += threads
                s1 = bsum(s1, buf)
                if is_ce:
                    A = bsum(A, buf)
                    B = bsum(B, buf)
                    Ar = bsum(Ar, buf)
                else:
                    tau = bsum(tau, buf)
                    E_r = bsum(E_r, buf)
                    W_T = bsum(W_T, buf)
                    WT_T = bsum(WT_T, buf)
            S = 1.0 + s1
            q = s1 / S  # 1 - p_argmax, never formed as a difference
            if is_ce and tid == 0:
                # A log S - sum a (z - m): two non-negative terms, log1p keeps S' digits
                loss[r] = A * math.log1p(s1) - B
            # pass 3: CE gradient; MSE loss and V = sum over the rest (not T) of p u
            Q = E_r / S  # MSE: 1 - tau p_max, never formed as a difference
            lsum = 0.0
            V = 0.0
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
                    d = _mse_d(p, t, Q, sh == 0.0 and tau == 1.0)
                    u = wk * d
                    lsum += u * d
                    if sh != 0.0:
                        V += p * u
                k += threads
            if not is_ce:
                lsum = bsum(lsum, buf)
                V = bsum(V, buf)
                if tid == 0:
                    loss[r] = lsum
                if want_grad:
                    p_max = 1.0 / S
                    # U_T = p_max W_T - WT_T cancels when a tied class is the label;
                    # with tau p_max = 1 - Q it is (W_T/tau - WT_T) - Q W_T/tau
                    w_bar = W_T / tau
                    U_T = (w_bar - WT_T) - Q * w_bar
                    # pass 4: 2 p (u_j - sum p u) = 2 p (p_max A_j + (Q u_j - V)), no cancellation
                    k = tid
                    while k < C:
                        v = float64(z[base + k * inner])
                        sh = _shift(v, m, inf_row)
                        p = math.exp(sh) / S
                        t = _target(has_labels, k, y, probs, base + k * inner, eps, eps_c)
                        wk = float64(w[k]) if has_w else 1.0
                        u = wk * _mse_d(p, t, Q, sh == 0.0 and tau == 1.0)
                        tw = tau * wk
                        if sh == 0.0:
                            Aj = p_max * (tw - W_T) - (tw * t - WT_T)
                        else:
                            Aj = tau * u - U_T
                        G = p_max * Aj + (Q * u - V)
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


@cuda.jit(device=True, inline=True)
def _mse_d(p, t, Q, sole_max):
    """p - t; at a sole max (1 - t) - Q, exact when p_max rounds to 1."""
    return (1.0 - t) - Q if sole_max else p - t


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
    # (CE only: MSE's tied-class sums T would need rescaling too)
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
