"""One registry of losses, read by the tests, the benchmarks and the report.

Each :class:`LossSpec` says what a loss is (public function, family), how to
make ordinary inputs for it, and how many bytes a fused forward+backward pass
must move at the least (the byte model for GB/s figures).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _api


@dataclass(frozen=True)
class LossSpec:
    name: str
    func: Callable
    #: "elementwise" (per-element loss, same-shape float target) or
    #: "softmax" (per-row loss along ``axis``, integer or probability target)
    family: str

    def make_inputs(self, shape, dtype=np.float32, *, rng=None, scale=3.0, probs=False):
        """Ordinary ``(logits, target)`` of ``shape`` (softmax: class axis last)."""
        rng = np.random.default_rng(0) if rng is None else rng
        z = (rng.standard_normal(shape) * scale).astype(dtype)
        if self.family == "elementwise":
            if self.name == "mse":
                return z, rng.standard_normal(shape).astype(dtype)
            return z, rng.random(shape).astype(dtype)
        if probs:
            t = rng.random(shape)
            return z, (t / t.sum(axis=-1, keepdims=True)).astype(dtype)
        return z, rng.integers(0, shape[-1], shape[:-1]).astype(np.int64)

    def bytes_moved(self, shape, dtype=np.float32, *, grad=True, probs=False):
        """Least traffic of one fused call: read logits and target, write grad.

        Elementwise: n * (2 + grad) * itemsize.  Softmax with labels:
        n * (1 + grad) * itemsize + rows * 8 (int64 labels) + rows * 8
        (the float64 per-row losses); with probabilities the target is read
        like the logits.
        """
        n = int(np.prod(shape))
        item = np.dtype(dtype).itemsize
        if self.family == "elementwise":
            return n * (2 + int(grad)) * item
        rows = n // shape[-1] if shape[-1] else 0
        target = n * item if probs else rows * 8
        return n * (1 + int(grad)) * item + target + rows * 8


LOSSES = {
    spec.name: spec
    for spec in (
        LossSpec("mse", _api.mse, "elementwise"),
        LossSpec("sigmoid_mse", _api.sigmoid_mse, "elementwise"),
        LossSpec("sigmoid_bce", _api.sigmoid_bce, "elementwise"),
        LossSpec("softmax_cross_entropy", _api.softmax_cross_entropy, "softmax"),
        LossSpec("softmax_mse", _api.softmax_mse, "softmax"),
    )
}
