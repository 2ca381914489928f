"""Run the CUDA kernel tests (tests/cuda_sim) under the CUDA simulator.

``NUMBA_ENABLE_CUDASIM`` must be set before numba is first imported, and this
process has imported numba already, so the simulator run is a subprocess.
Sizes there are tiny (8 rows x <= 128 classes, 32 threads per block): the
simulator runs every CUDA thread as a Python thread.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cuda_kernels_under_simulator():
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "tests", "cuda_sim"), "-q",
           "-p", "no:cacheprovider", "--rootdir", ROOT]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    # the GPU-only tests skip here; everything else must have run
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 60, tail
