"""The GPU benchmark script runs end to end (tiny sizes, no results written)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_gpu_smoke():
    path = os.path.join(ROOT, "bench", "gpu", "bench_gpu.py")
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--smoke"])
    assert [r["op"] for r in rows] == ["sigmoid_bce", "sigmoid_mse", "mse", "softmax_cross_entropy"]
    for r in rows:
        assert r["kernel_ms"] > 0 and r["bytes"] > 0 and r["copy_GBps"] > 0
    md = mod.markdown(mod.environment(), rows, "cmd")
    assert md.count("\n| ") == len(rows) + 1  # header + one line per case
