"""Checks that need a real GPU (skipped under the simulator and without one).

Run in a session that has a GPU: ``PYTHONPATH=. python -m pytest tests/cuda_sim -q``.
"""
import numpy as np
import pytest
from numba import config

import fastloss
from fastloss import _cuda, reference
from fastloss.registry import LOSSES
from simcheck import assert_close, softmax_inputs

pytestmark = pytest.mark.skipif(bool(config.ENABLE_CUDASIM), reason="needs a real GPU (block sizes, shuffles, CAI)")


@pytest.mark.parametrize("C", [2, 33, 600, 9000, 262144])  # every block size of threads_for, ragged chunks
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_mse"])
def test_wide_rows_match_reference(op, C):
    z, labels, _ = softmax_inputs(np.float32, C)
    w = np.linspace(0.5, 1.5, C).astype(np.float32)
    eps = 0.1 if op == "softmax_cross_entropy" else 0.0
    out = []
    for mod in (reference, _cuda):
        g = np.empty_like(z)
        loss = np.empty(z.shape[0])
        mod.softmax_rows(op, z.copy(), labels, None, w, -100, eps, g, loss, 0.5)
        out.append((loss, g))
    assert_close(out[1][0], out[0][0], np.float32, "loss")
    assert_close(out[1][1], out[0][1], np.float32, "grad")


@pytest.mark.parametrize("op", list(LOSSES))
def test_torch_tensors_dispatch_to_device(op):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    spec = LOSSES[op]
    z, t = spec.make_inputs((16, 300), np.float32)
    want_l, want_g = spec.func(z, t, reduction="none", return_grad=True, backend="numpy")
    zt = torch.as_tensor(z, device="cuda").requires_grad_(True)
    got_l, got_g = spec.func(zt, torch.as_tensor(t, device="cuda"), reduction="none", return_grad=True)
    assert isinstance(got_l, torch.Tensor) and isinstance(got_g, torch.Tensor) and got_g.is_cuda
    assert_close(got_l.cpu().numpy(), want_l, np.float32, "loss")
    assert_close(got_g.cpu().numpy(), want_g, np.float32, "grad")


def test_cupy_inplace_gradient():
    cp = pytest.importorskip("cupy")
    z, y = LOSSES["sigmoid_bce"].make_inputs((64, 33), np.float64)
    want_l, want_g = fastloss.sigmoid_bce(z, y, return_grad=True, backend="numpy")
    zc = cp.asarray(z)
    loss, g = fastloss.sigmoid_bce(zc, cp.asarray(y), return_grad=True, out=zc)
    assert g is zc and loss == pytest.approx(want_l, rel=1e-13)
    assert_close(cp.asnumpy(zc), want_g, np.float64, "grad")
