"""pytest-benchmark configuration: sizes, implementations and the bandwidth probe.

Sizes: ``--bench-sizes`` or ``FASTLOSS_BENCH_SIZES`` (tiny | quick | full);
the default is ``tiny`` when benchmarks are disabled (CI runs them as plain
tests) and ``quick`` when enabled.  ``FASTLOSS_BENCH_PEERS`` (comma list,
default ``numpy,torch,jax``) picks the peers; ``torch.compile`` joins at
``full`` sizes.
"""
from __future__ import annotations

import os

import pytest

import fastloss
from fastloss import registry
from fastloss._bench import peers, throughput, timing


def pytest_addoption(parser):
    parser.addoption("--bench-sizes", choices=sorted(throughput.SIZES), default=None,
                     help="fastloss benchmark size set (default: tiny if --benchmark-disable, else quick)")


def size_set(config):
    chosen = config.getoption("--bench-sizes") or os.environ.get("FASTLOSS_BENCH_SIZES")
    if chosen:
        return chosen
    disabled = config.getoption("benchmark_disable", default=True)
    return "tiny" if disabled else "quick"


_IMPLS = {}


def implementations(full):
    """fastloss CPU backends then the installed peers, built once per session."""
    if "list" not in _IMPLS:
        names = tuple(os.environ.get("FASTLOSS_BENCH_PEERS", "numpy,torch,jax").split(","))
        ext, _ = peers.external_peers(names, full=full)
        mine = peers.fastloss_peers([b for b in fastloss.available_backends() if b != "cuda"])
        _IMPLS["list"] = mine + ext
    return _IMPLS["list"]


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    sizes = size_set(metafunc.config)
    impls = implementations(sizes == "full")
    tasks = throughput.plan(impls, list(registry.LOSSES), ["float32", "float64"], sizes)
    ids = [f"{op}-{dt}-{'x'.join(map(str, shape))}-{mode}-{impl.name}" for impl, op, dt, shape, mode in tasks]
    metafunc.parametrize("case", tasks, ids=ids)


@pytest.fixture(scope="session")
def bandwidth(request):
    """Copy/triad GB/s of this machine, measured once in this run."""
    tiny = size_set(request.config) == "tiny"
    return timing.memory_bandwidth(n=1 << 16 if tiny else 1 << 24, repeats=2 if tiny else 5)
