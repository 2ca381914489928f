"""Compile every real CUDA kernel to PTX (no GPU needed).

The simulator (tests/cuda_sim) cannot run the warp-shuffle reductions that
real GPUs use; this type-checks and compiles them, for each op, option set
and dtype, so a typing error or an unsupported construct fails in CI.
"""
import re

import pytest

numba_cuda = pytest.importorskip("numba.cuda")

from numba import cuda, float32, float64, int32, int64  # noqa: E402
from numba.core import types  # noqa: E402

from fastloss._cuda import _device, _elementwise, _reduce, _softmax  # noqa: E402

DTYPES = {"float16": types.float16, "float32": float32, "float64": float64}
CC = (8, 0)
# a float atomic would make the reduced loss run-to-run nondeterministic
FLOAT_ATOMIC = re.compile(r"\batom\.[\w.]*\.f(16|32|64)\b|\bred\.[\w.]*\.f(16|32|64)\b")


def _compile(pyfunc, sig):
    try:
        ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=CC)
    except Exception as exc:  # noqa: BLE001 - an environment without NVVM is a skip, not a pass
        if "NVVM" in str(exc) or "libnvvm" in str(exc).lower():
            pytest.skip(f"NVVM unavailable: {exc}")
        raise
    assert ".entry" in ptx
    assert not FLOAT_ATOMIC.search(ptx)
    return ptx


def _elementwise_sig(t, y=None):
    a = t[::1]
    return (a, (y or t)[::1], a, a, a, a, float64, float64[::1])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", _elementwise.OPS)
def test_elementwise_all_options(op, dtype):
    pyfunc = _elementwise.kernel_py(op, True, op == "sigmoid_bce", True, True, 256, True)
    ptx = _compile(pyfunc, _elementwise_sig(DTYPES[dtype]))
    assert "shfl.sync" in ptx


@pytest.mark.parametrize("op", _elementwise.OPS)
def test_elementwise_no_options_int_target(op):
    # device targets may be bool/int: the kernel casts them
    pyfunc = _elementwise.kernel_py(op, False, False, False, False, 256, True)
    _compile(pyfunc, _elementwise_sig(float32, types.boolean))


def test_elementwise_tree_flavour():
    pyfunc = _elementwise.kernel_py("sigmoid_bce", True, True, True, True, 32, False)
    ptx = _compile(pyfunc, _elementwise_sig(float64))
    assert "shfl" not in ptx


def _softmax_sig(t, lab=int64, wt=None):
    a = t[::1]
    return (a, lab[::1], a, (wt or t)[::1], int64, float64, a, float64[::1], float64, int64, int64)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "probs"])
@pytest.mark.parametrize("op", _softmax.OPS)
def test_softmax_all_options(op, labels, dtype):
    # CE with storage narrower than float64 takes the online (one read fewer) path, as softmax_dev chooses
    online = dtype != "float64" and op == "softmax_cross_entropy"
    pyfunc = _softmax.kernel_py(op, labels, True, True, 1024, True, online)
    ptx = _compile(pyfunc, _softmax_sig(DTYPES[dtype]))
    assert "shfl.sync" in ptx


# one block size per op (the block size is only a constant in the same code;
# 1024 is compiled above): each PTX compile costs seconds of CI
@pytest.mark.parametrize("op,threads", [("softmax_cross_entropy", 256), ("softmax_mse", 64)])
def test_softmax_loss_only_int32_labels(op, threads):
    pyfunc = _softmax.kernel_py(op, True, False, False, threads, True, op == "softmax_cross_entropy")
    # per-row losses in the logits' dtype (reduction='none' on the device)
    sig = list(_softmax_sig(float32, int32))
    sig[7] = float32[::1]
    _compile(pyfunc, tuple(sig))


def test_softmax_mse_grad_no_weight():
    # softmax_mse's gradient has its own unweighted branch (W = sum_N p w is P)
    ptx = _compile(_softmax.kernel_py("softmax_mse", True, False, True, 256, True), _softmax_sig(float32))
    assert "shfl.sync" in ptx


def test_softmax_tree_flavour():
    ptx = _compile(_softmax.kernel_py("softmax_cross_entropy", True, True, True, 32, False), _softmax_sig(float32))
    assert "shfl" not in ptx


@pytest.mark.parametrize("shfl", [True, False])
def test_sum_kernel(shfl):
    _compile(_reduce.sum_kernel_py(256, shfl), (float64[::1], float64[::1]))


@pytest.mark.parametrize("use_w", [True, False])
def test_label_check_kernel(use_w):
    ptx = _compile(_device.label_kernel_py(use_w), (int64[::1], int64, int64, float32[::1], float64[::1], int64[::1]))
    assert "atom" in ptx  # the integer atomic min that finds the first bad label
