"""CUDA kernel tests: run under the simulator (CI) or on a real GPU.

CI runs this folder in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (see
tests/test_cuda_sim.py): the variable must be set before numba is imported.
Collected by a plain ``pytest tests`` run, the tests execute on a GPU if
there is one and are skipped otherwise.
"""
import os

import pytest


def _usable():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        from numba import cuda
    except ImportError:
        return False
    return cuda.is_available()


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    usable = _usable()
    skip = pytest.mark.skip(reason="no CUDA GPU; run with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_sim.py does)")
    # The simulator runs the kernels' IEEE arithmetic on NumPy scalars, which
    # warn on overflow/invalid (inf - inf, 3e38 * 2) where a GPU is silent; the
    # reference warns the same way.  Results are compared, not warnings.
    quiet = pytest.mark.filterwarnings("ignore::RuntimeWarning")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(quiet)
            if not usable:
                item.add_marker(skip)
