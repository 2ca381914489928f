"""The compiled C extension loads and matches its header (csrc/fastloss.h)."""
import os
import re

import numpy as np
import pytest

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

HEADER = os.path.join(os.path.dirname(__file__), os.pardir, "csrc", "fastloss.h")


def _declared():
    text = open(HEADER).read()
    block = re.search(r"FL_CDEF_BEGIN \*/(.*)/\* FL_CDEF_END", text, re.S).group(1)
    return set(re.findall(r"\b(fl_\w+)\s*\(", block)), int(re.search(r"FL_ABI_VERSION (\d+)", block).group(1))


def test_every_header_function_is_in_lib():
    names, abi = _declared()
    kernels = {f"fl_{op}_{sfx}" for op in ("mse", "sigmoid_mse", "sigmoid_bce", "softmax_cross_entropy",
                                           "softmax_mse") for sfx in ("f32", "f64")}
    assert kernels <= names
    missing = [n for n in names if not hasattr(c.lib, n)]
    assert missing == []
    assert c.lib.fl_abi_version() == abi == c.ABI_VERSION


def test_check_available_and_name():
    assert c.NAME == "c"
    c.check_available()


def test_thread_setting_roundtrip():
    old = c.set_num_threads(3)
    try:
        assert c.get_num_threads() == 3
    finally:
        c.set_num_threads(old)
    assert c.get_num_threads() >= 1


def test_public_api_runs_on_c():
    import fastloss

    loss, grad = fastloss.mse(np.array([1.0, 3.0]), np.array([0.0, 1.0]), return_grad=True, backend="c")
    assert float(loss) == 2.5 and grad.tolist() == [1.0, 2.0]
