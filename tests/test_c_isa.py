"""Every compiled instruction-set variant of the C kernels matches the reference.

The fastest variant this CPU supports runs in the main test process; here
the slower ones run test_c_kernels.py, the row-path tests (short rows,
softmax_mse rows: GNU vector types lowered per variant) and the streaming
stores (each variant has its own vector width) in a subprocess with
FASTLOSS_C_ISA capping the choice.
"""
import os
import subprocess
import sys

import pytest

c = pytest.importorskip("fastloss._c")
if c.lib is None:
    pytest.skip("C extension not built", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
LEVEL = {"base": 0, "avx2": 3, "avx512": 4}


@pytest.mark.parametrize("cap", ["base", "avx2"])
def test_kernels_under_isa_cap(cap):
    if os.environ.get("FASTLOSS_C_ISA"):
        pytest.skip("already running under an ISA cap")
    if LEVEL[c.isa()] <= LEVEL[cap]:
        pytest.skip(f"this process already runs the {c.isa()!r} kernels")
    env = dict(os.environ, FASTLOSS_C_ISA=cap,
               PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    probe = subprocess.run([sys.executable, "-c", "import fastloss._c as c; print(c.isa())"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == cap, probe.stderr
    # the kernel tests, and the row paths built on GNU vector types (lowered differently per variant)
    files = [os.path.join(HERE, f) for f in ("test_c_kernels.py", "test_c_short_rows.py", "test_c_smse_rows.py",
                                                 "test_c_stream.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *files],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
