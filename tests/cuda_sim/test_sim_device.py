"""device_call (the public API on CUDA arrays) vs the NumPy path.

Under the simulator the arrays are numba's simulated device arrays (they
lack ``__cuda_array_interface__``, so ``device_call`` is called directly
instead of through the public functions' dispatch).
"""
import numpy as np
import pytest
from numba import cuda

import fastloss
from fastloss import _cuda
from fastloss.registry import LOSSES
from simcheck import assert_close

ELEMENTWISE = ["mse", "sigmoid_mse", "sigmoid_bce"]


def _host(x):
    return x if isinstance(x, (np.ndarray, np.generic)) else x.copy_to_host()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_matches_numpy_path(op, reduction):
    spec = LOSSES[op]
    z, y = spec.make_inputs((4, 8), np.float32)
    w = np.linspace(0.0, 2.0, 8, dtype=np.float32)  # per-class, zero first: masks
    extra = {"pos_weight": np.full(8, 2.0, np.float32)} if op == "sigmoid_bce" else {}
    want_l, want_g = spec.func(z, y, weight=w, reduction=reduction, return_grad=True, backend="numpy", **extra)
    got_l, got_g = _cuda.device_call(op, cuda.to_device(z), cuda.to_device(y), weight=cuda.to_device(w),
                                     reduction=reduction, return_grad=True, out=None, **extra)
    if reduction == "none":
        assert_close(_host(got_l), want_l, np.float32, "loss")
    else:
        assert isinstance(got_l, np.float32)
        assert got_l == pytest.approx(want_l, rel=1e-6)
    assert_close(_host(got_g), want_g, np.float32, "grad")


def test_elementwise_inplace_out_and_float16():
    z, y = LOSSES["sigmoid_bce"].make_inputs((3, 5), np.float16)
    want_l, want_g = fastloss.sigmoid_bce(z, y, return_grad=True, backend="numpy")
    dz = cuda.to_device(z)
    got_l, got_g = _cuda.device_call("sigmoid_bce", dz, cuda.to_device(y), weight=None, pos_weight=None,
                                     reduction="mean", return_grad=True, out=dz)
    assert got_g is dz and got_l.dtype == np.float16
    # float16 is rounded once from float64 here, twice (via float32) on the host path
    assert np.allclose(_host(dz).astype(np.float64), want_g, rtol=2e-3, atol=1e-6)
    assert got_l == pytest.approx(want_l, rel=2e-3)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_mse"])
def test_softmax_axis1_labels_weight(op, reduction):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((2, 5, 3)) * 3).astype(np.float64)  # classes on axis 1: strided rows
    labels = rng.integers(0, 5, (2, 3))
    labels[0, 1] = -100
    w = rng.random(5) + 0.5
    eps = {"label_smoothing": 0.1} if op == "softmax_cross_entropy" else {}
    want_l, want_g = LOSSES[op].func(z, labels, axis=1, weight=w, reduction=reduction, return_grad=True,
                                     backend="numpy", **eps)
    got_l, got_g = _cuda.device_call(op, cuda.to_device(z), cuda.to_device(labels), axis=1, weight=w,
                                     ignore_index=-100, reduction=reduction, return_grad=True, out=None, **eps)
    if reduction == "none":
        assert_close(_host(got_l), want_l, np.float64, "loss")
    else:
        assert got_l == pytest.approx(want_l, rel=1e-12)
    assert_close(_host(got_g), want_g, np.float64, "grad")


def test_softmax_probs_sum_is_deterministic():
    z, p = LOSSES["softmax_cross_entropy"].make_inputs((6, 40), np.float32, probs=True)
    want = fastloss.softmax_cross_entropy(z, p, reduction="sum", backend="numpy")
    dz, dp = cuda.to_device(z), cuda.to_device(p)
    runs = [_cuda.device_call("softmax_cross_entropy", dz, dp, reduction="sum") for _ in range(2)]
    assert runs[0].tobytes() == runs[1].tobytes()
    assert runs[0] == pytest.approx(want, rel=1e-6)


def test_bad_label_reported_like_host():
    z = np.zeros((2, 3, 4), np.float32)
    labels = np.zeros((2, 3), np.int64)
    labels[1, 2] = 7
    with pytest.raises(ValueError) as host:
        fastloss.softmax_cross_entropy(z, labels, backend="numpy")
    with pytest.raises(ValueError) as dev:
        _cuda.device_call("softmax_cross_entropy", cuda.to_device(z), cuda.to_device(labels))
    assert str(dev.value) == str(host.value)
    assert "position (1, 2)" in str(dev.value)


def test_device_argument_errors():
    z = cuda.to_device(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="trailing axes"):
        _cuda.device_call("mse", z, cuda.to_device(np.zeros((2, 4))), weight=cuda.to_device(np.ones((2, 1))))
    big = cuda.to_device(np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="overlaps logits"):
        _cuda.device_call("mse", big[:8], np.zeros(8, np.float32), return_grad=True, out=big[1:])
    with pytest.raises(ValueError, match="shape"):
        _cuda.device_call("softmax_mse", z, cuda.to_device(np.zeros(3, np.int64)))


def test_host_interface_through_public_api():
    # backend="cuda" with NumPy inputs: copy in, compute, copy out
    z, y = LOSSES["sigmoid_mse"].make_inputs((5, 7), np.float64)
    want = fastloss.sigmoid_mse(z, y, return_grad=True, backend="numpy")
    got = fastloss.sigmoid_mse(z, y, return_grad=True, backend="cuda")
    assert got[0] == pytest.approx(want[0], rel=1e-13)
    assert_close(got[1], want[1], np.float64, "grad")
    assert "cuda" in fastloss.available_backends()


def test_softmax_float16_probs_none():
    z, p = LOSSES["softmax_mse"].make_inputs((3, 20), np.float16, probs=True)
    want_l, want_g = fastloss.softmax_mse(z, p, reduction="none", return_grad=True, backend="numpy")
    got_l, got_g = _cuda.device_call("softmax_mse", cuda.to_device(z), cuda.to_device(p), reduction="none",
                                     return_grad=True)
    assert _host(got_l).dtype == np.float16 and _host(got_g).dtype == np.float16
    assert np.allclose(_host(got_l).astype(float), want_l, rtol=2e-3, atol=1e-7)
    assert np.allclose(_host(got_g).astype(float), want_g, rtol=2e-3, atol=1e-7)


def test_empty_inputs():
    z = cuda.to_device(np.zeros((0, 5), np.float32))
    loss, g = _cuda.device_call("softmax_cross_entropy", z, cuda.to_device(np.zeros(0, np.int64)),
                                return_grad=True)
    assert loss == 0.0 and g.shape == (0, 5)
    loss = _cuda.device_call("sigmoid_bce", cuda.to_device(np.zeros(0)), cuda.to_device(np.zeros(0)))
    assert loss == 0.0


def test_zero_classes_rows_get_zero_loss():
    z = np.zeros((3, 0), np.float64)
    p = np.zeros((3, 0), np.float64)
    want = fastloss.softmax_cross_entropy(z, p, reduction="none", backend="numpy")
    got = _cuda.device_call("softmax_cross_entropy", cuda.to_device(z), cuda.to_device(p), reduction="none")
    assert np.array_equal(_host(got), want)
