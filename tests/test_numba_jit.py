"""Process-level behaviour of the numba backend: fork safety, cache fallback."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CALL = """
import numpy as np
import fastloss._numba as B
n = B.SERIAL_ELEMENTS['sigmoid_bce'] + 1000  # the parallel kernel
z = np.linspace(-5, 5, n); y = np.full(n, 0.5)
t = B.elementwise("sigmoid_bce", z, y, None, None, None, None, 1.0)
"""


def _run(code, env=None, timeout=240):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, timeout=timeout,
                          capture_output=True, text=True)


def test_fork_after_parallel_call_does_not_hang():
    """DataLoader-style: parallel call, fork, the child calls fastloss again."""
    code = _CALL + """
import os, numba
pid = os.fork()
if pid == 0:
    t2 = B.elementwise("sigmoid_bce", z, y, None, None, None, None, 1.0)
    os._exit(0 if t2 == t else 3)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, status
print(numba.threading_layer())
"""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    res = _run(code, env=None if "NUMBA_THREADING_LAYER" not in os.environ else env, timeout=240)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in ("workqueue", "tbb")


def test_user_threading_layer_choice_is_kept():
    res = _run(_CALL + "import numba; print(numba.threading_layer())",
               env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "workqueue"


def test_read_only_cache_dir_falls_back(tmp_path):
    """A read-only NUMBA_CACHE_DIR must not break import or calls."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(ro, os.W_OK):  # root ignores permission bits
        pytest.skip("cannot make a read-only directory as this user")
    res = _run(_CALL + "print(t)", env={"NUMBA_CACHE_DIR": str(ro)})
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.split()[-1]) > 0


def test_unwritable_cache_dir_path_falls_back(tmp_path):
    """A cache dir that cannot be created (a file in the way) also works."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _run(_CALL + "print(t)", env={"NUMBA_CACHE_DIR": str(blocker / "cache")})
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.split()[-1]) > 0


def test_cache_is_keyed_on_all_package_sources():
    """Kernels' cache stamp covers _math.py too (numba alone keys on one file)."""
    from fastloss._numba import _elementwise, _jit

    kern = _elementwise.KERNELS["mse"][False][0]
    cache = getattr(kern, "_cache", None)
    locator = getattr(getattr(cache, "_impl", None), "_locator", None)
    if locator is None:
        pytest.skip("caching disabled here (read-only cache locations)")
    assert type(locator).__name__.startswith("Fastloss")
    assert locator.get_source_stamp() == _jit._package_stamp()
