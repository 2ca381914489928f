"""The ``fastloss bench`` command, its progress bar and the report writers (tiny sizes)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from fastloss import cli
from fastloss._bench import report, throughput

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    argv = ["bench", "--sizes", "tiny", "--ops", "sigmoid_bce,softmax_cross_entropy", "--dtypes", "float32",
            "--peers", "numpy", "--grid", "12", "--epochs", "2", "--out", str(out), "--no-progress", "--quiet"]
    assert cli.main(argv) == 0
    return out


def test_report_folder_has_markdown_json_and_readable_pngs(bench_run):
    md = (bench_run / "report.md").read_text()
    data = json.loads((bench_run / "results.json").read_text())
    for section in ("## Summary", "## Throughput", "## Stability", "### 1. One sigmoid neuron", "### 4. NumPy MLP"):
        assert section in md
    assert "Command: `fastloss bench --sizes tiny" in md
    for png in ("neuron.png", "softmax_grid.png", "grad_vs_logit.png", "digits_mlp.png"):
        assert f"]({png})" in md
        blob = (bench_run / png).read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 10_000
    assert set(data) >= {"meta", "bandwidth", "throughput", "ratios", "compile", "stability", "experiments"}


def test_results_cover_every_requested_case(bench_run):
    data = json.loads((bench_run / "results.json").read_text())
    recs = data["throughput"]
    assert {r["op"] for r in recs} == {"sigmoid_bce", "softmax_cross_entropy"}
    assert {r["impl"] for r in recs} >= {"fastloss:numpy", "numpy"}
    assert {r["mode"] for r in recs} == {"fused", "fused_out", "forward"}
    out_impls = {r["impl"] for r in recs if r["mode"] == "fused_out"}
    assert "fastloss:numpy" in out_impls and all(i.startswith("fastloss:") for i in out_impls)  # out= is ours
    for r in recs:
        assert "error" not in r, r
        assert r["gbs"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9)
        assert r["frac_peak"] == pytest.approx(r["gbs"] / data["bandwidth"]["peak_gbs"])
    # one ratio per fastloss record and peer, peer time over fastloss time
    sec = {(r["impl"], r["op"], tuple(r["shape"]), r["mode"]): r["seconds"] for r in recs}
    n_fastloss = len({r["impl"] for r in recs if r["impl"].startswith("fastloss:")})
    # (fused_out, out= being ours only, is compared with the peer's fused call)
    n_numpy = len([r for r in recs if r["impl"] == "numpy"])
    n_numpy_fused = len([r for r in recs if r["impl"] == "numpy" and r["mode"] == "fused"])
    assert len(data["ratios"]) == n_fastloss * (n_numpy + n_numpy_fused)
    for q in data["ratios"]:
        case = (q["op"], tuple(q["shape"]), q["mode"])
        peer_case = (q["op"], tuple(q["shape"]), "fused" if q["mode"] == "fused_out" else q["mode"])
        assert q["ratio"] == pytest.approx(sec[(q["peer"], *peer_case)] / sec[(q["impl"], *case)])


def test_experiment_numbers_show_the_classic_effects(bench_run):
    exps = json.loads((bench_run / "results.json").read_text())["experiments"]
    neuron = exps["neuron"]["summary"]
    # BCE leaves the unlucky start quickly; MSE (saturated sigmoid) does not within 300 epochs
    assert neuron["unlucky/bce"]["epochs_to_output_below_0.1"] is not None
    assert neuron["unlucky/mse"]["final_output"] > neuron["unlucky/bce"]["final_output"]
    grid = exps["softmax_grid"]["stats"]
    (mine,) = [k for k in grid if k.startswith("softmax_cross_entropy/fastloss:")]  # the default backend
    assert grid[mine]["nonfinite_rows"] == 0
    assert grid["softmax_cross_entropy/numpy"]["nonfinite_rows"] > 0  # textbook log(p) of p = 0
    assert grid["softmax_cross_entropy/grad_norm"]["min"] >= 1.0  # CE keeps a gradient: |p - e_y| >= 1 - p_y


def test_unknown_backend_and_op_are_rejected(tmp_path):
    with pytest.raises(SystemExit, match="not available here"):
        cli.main(["bench", "--backends", "nosuch", "--out", str(tmp_path), "--quiet", "--no-progress"])
    with pytest.raises(SystemExit, match="unknown op"):
        cli.main(["bench", "--ops", "hinge", "--out", str(tmp_path), "--quiet", "--no-progress"])


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "fastloss", "bench", "--help"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0
    assert "--skip-experiments" in res.stdout and "--full" in res.stdout


def test_progress_bar_logs_tenths_when_not_a_terminal():
    buf = io.StringIO()
    bar = cli.Progress(20, stream=buf)
    for i in range(20):
        bar(f"step {i}")
    bar.close()
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    assert len(lines) == 10 and lines[-1].startswith("[" + "#" * 30 + "] 20/20")


def test_pytest_benchmark_json_becomes_ratio_tables():
    def bench(impl, sec):
        info = {"impl": impl, "op": "sigmoid_bce", "dtype": "float32", "shape": [1024], "n": 1024,
                "mode": "fused", "bytes": 12288, "first_call_s": 2 * sec, "peak_gbs": 10.0}
        return {"stats": {"min": sec, "median": 2 * sec}, "extra_info": info}
    data = {"benchmarks": [bench("fastloss:numpy", 1e-5), bench("torch", 3e-5)]}
    recs = report.from_pytest_benchmark(data)
    assert recs[0]["gbs"] == pytest.approx(12288 / 1e-5 / 1e9)
    assert recs[0]["frac_peak"] == pytest.approx(recs[0]["gbs"] / 10.0)
    (ratio,) = throughput.ratios(recs)
    assert ratio["peer"] == "torch" and ratio["ratio"] == pytest.approx(3.0)
    md = report.throughput_tables(recs)
    assert "| sigmoid_bce | 1024 | numpy | 10.0 | 1.23 | 12 % | 3.00× |" in md


def test_stability_summary_pools_backends_and_dtypes():
    def rec(impl, dtype, nonfinite, zeros, special, err):
        return {"op": "sigmoid_bce", "impl": impl, "dtype": dtype, "points": 9, "nonfinite": nonfinite,
                "zeros": zeros, "special": special, "max_err": err}
    recs = [rec("fastloss:c", "float32", 0, 0, 0, 0.5), rec("fastloss:numba", "float64", 0, 1, 0, 3.0),
            rec("torch", "float32", 2, 5, 1, 9e5), rec("torch", "float64", 1, 0, 0, 2.0)]
    md = report.stability_summary(recs)
    assert md.splitlines()[0] == "| op | fastloss | torch |"
    assert md.splitlines()[2] == "| sigmoid_bce | 0 / 1 / 3 | 4 / 5 / 9e+05 |"
