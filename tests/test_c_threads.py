"""C backend threading: deterministic sums, fork safety, GIL release, dispatch."""
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _py(code, env=None, timeout=60):
    """Run code in a fresh interpreter that imports this checkout."""
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("op", ["mse", "sigmoid_bce"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduced_loss_identical_for_any_thread_count(op, dtype, threads):
    rng = np.random.default_rng(1)
    n = 3 * 2**18 + 77  # several blocks per thread, a ragged tail
    z = (rng.standard_normal(n) * 1e3).astype(dtype)  # wide magnitudes: order matters
    y = rng.random(n).astype(dtype)
    results = []
    for nt in (1, 2, 3, 7):
        threads(nt)
        g = np.empty_like(z)
        results.append((c.elementwise(op, z, y, None, None, g, None, 1.0), g))
    for s, g in results[1:]:
        assert s == results[0][0]
        np.testing.assert_array_equal(g, results[0][1])


def test_softmax_identical_for_any_thread_count(threads):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((4099, 64)).astype(np.float32)
    labels = rng.integers(0, 64, 4099)
    out = []
    for nt in (1, 2, 5):
        threads(nt)
        g, l = np.empty_like(z), np.empty(4099)
        total = c.softmax_rows("softmax_cross_entropy", z, labels, None, None, -100, 0.0, g, l, 1.0)
        out.append((g, l, total))
    for g, l, total in out[1:]:
        np.testing.assert_array_equal(g, out[0][0])
        np.testing.assert_array_equal(l, out[0][1])
        assert total.hex() == out[0][2].hex()  # the reduced loss too


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_mse"])
@pytest.mark.parametrize("R", [1, 5, 1024, 1025, 3000])
def test_softmax_total_is_the_rows_sum(op, R):
    """The C kernels return the sum of the row losses: accurate, NaN and inf
    carried, the same bits in place and loss-only."""
    rng = np.random.default_rng(R)
    z = (rng.standard_normal((R, 12)) * 3).astype(np.float32)
    labels = rng.integers(0, 12, R)
    g, l = np.empty_like(z), np.empty(R)
    total = c.softmax_rows(op, z, labels, None, None, -100, 0.0, g, l, 1.0)
    # 4 lanes of <= 256 rows a block, blocks added in order: terms >= 0
    assert total == pytest.approx(math.fsum(l), rel=(256 + R // 1024 + 4) * 2.0**-53, abs=0.0)
    zz, l2 = z.copy(), np.empty(R)
    assert c.softmax_rows(op, zz, labels, None, None, -100, 0.0, zz, l2, 1.0).hex() == total.hex()
    assert c.softmax_rows(op, z, labels, None, None, -100, 0.0, None, l2, 1.0).hex() == total.hex()
    z[R // 2, 3] = np.nan
    assert math.isnan(c.softmax_rows(op, z, labels, None, None, -100, 0.0, g, l, 1.0))


def test_thread_count_from_environment():
    r = _py("import fastloss._c as c; print(c.get_num_threads())", env={"FASTLOSS_NUM_THREADS": "3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"


def test_fork_after_threaded_call():
    """A child forked after a multi-threaded call can call again (GNU OpenMP would hang here)."""
    code = """
        import os, numpy as np, fastloss._c as c
        c.set_num_threads(4)
        z = np.linspace(-5, 5, 2**20); y = np.full_like(z, 0.5); g = np.empty_like(z)
        s = c.elementwise("sigmoid_bce", z, y, None, None, g, None, 1.0)
        pid = os.fork()
        if pid == 0:
            ok = c.elementwise("sigmoid_bce", z, y, None, None, g, None, 1.0) == s
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    r = _py(code, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


def test_gil_released_during_kernel(threads):
    """Python code keeps running while another thread is inside a long C call."""
    threads(1)
    n = 2**24
    z = np.linspace(-30, 30, n)
    y = np.full(n, 0.25)
    g = np.empty_like(z)
    t0 = time.perf_counter()
    c.elementwise("sigmoid_bce", z, y, None, None, g, None, 1.0)
    duration = time.perf_counter() - t0
    worker = threading.Thread(target=c.elementwise, args=("sigmoid_bce", z, y, None, None, g, None, 1.0))
    worker.start()
    last = time.perf_counter()
    longest = 0.0
    while worker.is_alive():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    worker.join()
    # GIL held through the call: one gap as long as the call; released: the
    # loop keeps turning (gaps of a thread switch, a few ms)
    assert longest < 0.5 * duration, (longest, duration)


def test_disable_numba_picks_c():
    r = _py("import fastloss._backends as b; print(b.resolve(None).NAME)",
            env={"FASTLOSS_DISABLE": "numba", "FASTLOSS_BACKEND": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "c"
