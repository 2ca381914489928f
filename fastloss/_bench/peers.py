"""Every loss implemented by each peer, behind one small interface.

A peer offers

``prepare(op, z, y, grad=True) -> callable``
    A zero-argument callable computing the ``'mean'`` loss (and, with
    ``grad``, its gradient w.r.t. the logits) of NumPy inputs converted once
    to the peer's own arrays outside the timing.  The callable blocks until
    the result exists.
``pointwise(op, z, y) -> (loss, grad)``
    Per-element (elementwise ops) or per-row (softmax ops) losses and each
    element's/row's own gradient, as NumPy arrays of the input dtype.

Peers: ``fastloss:<backend>``, ``numpy`` (textbook unfused formulas),
``torch`` (eager, loss + ``backward()``), ``jax`` (``jit(value_and_grad)``; float64 under a scoped ``jax.enable_x64``)
and ``torch.compile``.  Softmax targets are integer labels.
"""
from __future__ import annotations

import numpy as np

from .. import registry

ELEMENTWISE = tuple(k for k, s in registry.LOSSES.items() if s.family == "elementwise")


# --------------------------------------------------------------------------
# fastloss itself
# --------------------------------------------------------------------------
class Fastloss:
    def __init__(self, backend):
        self.backend = backend
        self.name = f"fastloss:{backend}"

    supports_out = True

    def prepare(self, op, z, y, grad=True, out=False):
        f = registry.LOSSES[op].func
        b = self.backend
        if grad and out:  # gradient into one reused buffer (warm pages)
            g = np.empty_like(z)
            return lambda: f(z, y, return_grad=True, backend=b, out=g)
        if grad:
            return lambda: f(z, y, return_grad=True, backend=b)
        return lambda: f(z, y, backend=b)

    def pointwise(self, op, z, y):
        return registry.LOSSES[op].func(z, y, reduction="none", return_grad=True, backend=self.backend)


# --------------------------------------------------------------------------
# textbook NumPy: the formulas as written in a course, unfused
# --------------------------------------------------------------------------
def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # the usual max shift
    return e / e.sum(axis=-1, keepdims=True)


def textbook(op, z, y, grad=True):
    """Per-element/per-row ``(loss, grad)`` by the textbook formulas."""
    with np.errstate(all="ignore"):
        if op == "mse":
            d = z - y
            return d * d, (2 * d if grad else None)
        if op == "sigmoid_mse":
            s = _sigmoid(z)
            r = s - y
            return r * r, (2 * r * s * (1 - s) if grad else None)
        if op == "sigmoid_bce":
            s = _sigmoid(z)
            return -(y * np.log(s) + (1 - y) * np.log(1 - s)), (s - y if grad else None)
        p = _softmax(z)
        rows = np.arange(z.shape[0])
        if op == "softmax_cross_entropy":
            loss = -np.log(p[rows, y])
            if not grad:
                return loss, None
            g = p.copy()
            g[rows, y] -= 1
            return loss, g
        t = np.zeros_like(p)
        t[rows, y] = 1
        d = p - t
        loss = (d * d).sum(axis=-1)
        if not grad:
            return loss, None
        return loss, 2 * p * (d - (d * p).sum(axis=-1, keepdims=True))


class NumpyTextbook:
    name = "numpy"

    def prepare(self, op, z, y, grad=True):
        def run():
            loss, g = textbook(op, z, y, grad)
            n = loss.size
            return loss.mean(), (g / n if grad else None)
        return run

    def pointwise(self, op, z, y):
        return textbook(op, z, y)


# --------------------------------------------------------------------------
# PyTorch eager and torch.compile
# --------------------------------------------------------------------------
def _torch_loss(op, reduction):
    import torch
    import torch.nn.functional as F

    def loss(z, y):
        if op == "mse":
            return F.mse_loss(z, y, reduction=reduction)
        if op == "sigmoid_mse":
            return F.mse_loss(torch.sigmoid(z), y, reduction=reduction)
        if op == "sigmoid_bce":
            return F.binary_cross_entropy_with_logits(z, y, reduction=reduction)
        if op == "softmax_cross_entropy":
            return F.cross_entropy(z, y, reduction=reduction)
        oh = F.one_hot(y, z.shape[-1]).to(z.dtype)
        rows = ((torch.softmax(z, dim=-1) - oh) ** 2).sum(dim=-1)
        return rows.mean() if reduction == "mean" else rows
    return loss


class Torch:
    name = "torch"
    compiled = False

    def __init__(self):
        import torch
        self.torch = torch
        self._cache = {}

    def _fn(self, op, reduction, case=None):
        # torch.compile: one compiled function per case (op, shape, dtype,
        # grad mode); a shared one recompiles per case and past dynamo's
        # recompile limit silently falls back to eager
        key = (op, reduction) + ((case,) if self.compiled else ())
        if key not in self._cache:
            f = _torch_loss(op, reduction)
            self._cache[key] = self.torch.compile(f) if self.compiled else f
        return self._cache[key]

    def prepare(self, op, z, y, grad=True):
        torch = self.torch
        f = self._fn(op, "mean", (z.shape, z.dtype.str, grad))
        zt = torch.from_numpy(z)
        yt = torch.from_numpy(y)
        if not grad:
            def fwd():
                with torch.no_grad():
                    return f(zt, yt)
            return fwd
        zt.requires_grad_(True)

        def fused():
            zt.grad = None
            loss = f(zt, yt)
            loss.backward()
            return loss, zt.grad
        return fused

    def pointwise(self, op, z, y):
        torch = self.torch
        zt = torch.from_numpy(z.copy()).requires_grad_(True)
        loss = self._fn(op, "none")(zt, torch.from_numpy(y))
        loss.sum().backward()  # sum: each element/row gets its own derivative
        return loss.detach().numpy(), zt.grad.numpy()


class TorchCompile(Torch):
    name = "torch.compile"
    compiled = True

    def __init__(self):
        super().__init__()
        # dynamo keys its cache on the code object, which every case shares:
        # past the default limit (8) it silently runs eager
        cfg = self.torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 1024))


# --------------------------------------------------------------------------
# JAX: jit(value_and_grad), x64 enabled for float64 inputs
# --------------------------------------------------------------------------
def _jax_loss(op):
    import jax
    import jax.numpy as jnp

    def per(z, y):
        if op == "mse":
            return (z - y) ** 2
        if op == "sigmoid_mse":
            return (jax.nn.sigmoid(z) - y) ** 2
        if op == "sigmoid_bce":  # the optax formula
            return -y * jax.nn.log_sigmoid(z) - (1 - y) * jax.nn.log_sigmoid(-z)
        if op == "softmax_cross_entropy":  # optax integer-label CE
            return -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), y[:, None], axis=-1)[:, 0]
        oh = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
        return ((jax.nn.softmax(z, axis=-1) - oh) ** 2).sum(axis=-1)
    return per


class Jax:
    name = "jax"

    def __init__(self):
        import jax
        self.jax = jax
        self._cache = {}

    def _x64(self, dtype):
        """float64 inputs run under ``jax.enable_x64`` (scoped: the global flag stays as it is)."""
        import contextlib
        return self.jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()

    def _jitted(self, op, kind):
        key = (op, kind)
        if key not in self._cache:
            jax = self.jax
            per = _jax_loss(op)
            mean = lambda z, y: per(z, y).mean()  # noqa: E731
            total = lambda z, y: per(z, y).sum()  # noqa: E731
            self._cache[key] = jax.jit({"fused": jax.value_and_grad(mean), "fwd": mean,
                                        "none": per, "grad_none": jax.grad(total)}[kind])
        return self._cache[key]

    def prepare(self, op, z, y, grad=True):
        jax = self.jax
        f = self._jitted(op, "fused" if grad else "fwd")
        with self._x64(z.dtype):
            zj, yj = jax.device_put(z), jax.device_put(y)

        def run():
            with self._x64(z.dtype):
                return jax.block_until_ready(f(zj, yj))
        return run

    def pointwise(self, op, z, y):
        with self._x64(z.dtype):
            loss = self._jitted(op, "none")(z, y)
            grad = self._jitted(op, "grad_none")(z, y)
            return np.asarray(loss), np.asarray(grad)


# --------------------------------------------------------------------------
def fastloss_peers(backends):
    return [Fastloss(b) for b in backends]


def external_peers(names=("numpy", "torch", "jax"), *, full=False):
    """Instantiate the external peers that are installed; ``torch.compile`` only with ``full``."""
    makers = {"numpy": NumpyTextbook, "torch": Torch, "jax": Jax, "torch.compile": TorchCompile}
    if full and "torch.compile" not in names and "torch" in names:
        names = tuple(names) + ("torch.compile",)
    out, missing = [], {}
    for name in names:
        try:
            out.append(makers[name]())
        except ImportError as exc:
            missing[name] = str(exc)
    return out, missing
