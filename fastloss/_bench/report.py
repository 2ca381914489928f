"""Turn benchmark results into Markdown tables (and read pytest-benchmark JSON).

Ratios are peer time / fastloss time measured in the same run: above 1
fastloss is faster.  Every table is footnoted with the machine, the versions
and the exact command.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import numpy as np

from ..oracle import CONTRACT_ULPS


def machine_info(command=None):
    """Machine, library versions and the command, for the footnote and results.json."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("fastloss", "numba", "torch", "jax", "mpmath"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent peers are simply not listed
            continue
    import fastloss
    try:  # other work on the machine skews timings: say how busy it was
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - not on every OS
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "versions": versions,
            "load_average": load,
            "backends": fastloss.available_backends(),
            "command": command or " ".join(["fastloss"] + sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _shape(s):
    return "x".join(str(v) for v in s)


def _fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def throughput_tables(records, peak_gbs=None):
    """One Markdown table per (mode, dtype): best fastloss backend, GB/s, % of STREAM, ratios to peers."""
    ok = [r for r in records if "seconds" in r]
    peers = sorted({r["impl"] for r in ok if not r["impl"].startswith("fastloss:")})
    backends = sorted({r["impl"] for r in ok if r["impl"].startswith("fastloss:")})
    blocks = []
    for mode in ("fused", "fused_out", "forward"):
        for dt in sorted({r["dtype"] for r in ok}):
            cases = {}
            for r in ok:
                if r["mode"] == mode and r["dtype"] == dt:
                    cases.setdefault((r["op"], tuple(r["shape"])), {})[r["impl"]] = r
            if mode == "fused_out":  # peers have no out=: their fused call is the comparison
                for r in ok:
                    key = (r["op"], tuple(r["shape"]))
                    if (r["mode"] == "fused" and r["dtype"] == dt and key in cases
                            and not r["impl"].startswith("fastloss:")):
                        cases[key].setdefault(r["impl"], r)
            if not cases:
                continue
            rows = []
            for (op, shape), by in cases.items():
                mine = [by[b] for b in backends if b in by]
                if not mine:
                    continue
                best = min(mine, key=lambda r: r["seconds"])
                frac = f"{100 * best['frac_peak']:.0f} %" if "frac_peak" in best else "–"
                row = [op, _shape(shape), best["impl"].split(":", 1)[1], f"{best['seconds'] * 1e6:.1f}",
                       f"{best['gbs']:.2f}", frac]
                row += [_fmt_ratio(by[p]["seconds"] / best["seconds"] if p in by else None) for p in peers]
                rows.append(row)
            title = {"fused": "fused forward+backward, fresh gradient array",
                     "fused_out": "fused forward+backward, gradient into a reused out= buffer "
                                  "(peers: their fused call)",
                     "forward": "forward only"}[mode]
            head = ["op", "shape", "best backend", "µs", "GB/s", "% STREAM"] + [f"vs {p}" for p in peers]
            blocks.append(f"**{title}, {dt}** (ratio = peer time / fastloss time; > 1: fastloss faster)\n\n"
                          + _table(head, rows))
    return "\n\n".join(blocks)


def per_backend_table(records, mode="fused"):
    """GB/s of every implementation, one row per (op, dtype, shape)."""
    ok = [r for r in records if "seconds" in r and r["mode"] == mode]
    impls = sorted({r["impl"] for r in ok}, key=lambda s: (not s.startswith("fastloss:"), s))
    cases = {}
    for r in ok:
        cases.setdefault((r["op"], r["dtype"], tuple(r["shape"])), {})[r["impl"]] = r["gbs"]
    rows = [[op, dt, _shape(shape)] + [f"{by[i]:.2f}" if i in by else "–" for i in impls]
            for (op, dt, shape), by in cases.items()]
    return _table(["op", "dtype", "shape"] + impls, rows)


def compile_summary(records):
    """Per implementation: median and max of (first call - steady call) seconds."""
    by = {}
    for r in records:
        if "compile_s" in r:
            by.setdefault(r["impl"], []).append(r["compile_s"])
    return {k: {"median_s": float(np.median(v)), "max_s": float(np.max(v)), "cases": len(v)} for k, v in by.items()}


def compile_table(summary):
    rows = [[k, f"{v['median_s'] * 1e3:.1f}", f"{v['max_s'] * 1e3:.1f}", v["cases"]] for k, v in summary.items()]
    return _table(["implementation", "median first-call overhead (ms)", "max (ms)", "cases"], rows)


def stability_table(records):
    """Per dtype: non-finite / flushed zeros / wrong specials / max ulp/(1+kappa), per op and impl."""
    blocks = []
    for dt in sorted({r["dtype"] for r in records}):
        rows = []
        for r in records:
            if r["dtype"] != dt:
                continue
            if "error" in r:
                rows.append([r["op"], r["impl"], "raised", "", "", "", r["error"][:60]])
                continue
            verdict = "ok" if (r["nonfinite"] == 0 and r["zeros"] == 0 and r["special"] == 0
                               and r["max_err"] <= CONTRACT_ULPS[dt]) else "**FAIL**"
            rows.append([r["op"], r["impl"], r["points"], r["nonfinite"], r["zeros"], r["special"],
                         f"{r['max_err']:.3g}", verdict])
        blocks.append(f"**{dt}**\n\n" + _table(
            ["op", "implementation", "points", "non-finite (truth finite)", "zeros (truth normal)",
             "wrong inf/NaN", "max ulp/(1+κ)", "contract"], rows))
    return "\n\n".join(blocks)


def stability_summary(records):
    """One row per op: 'non-finite / zeros / max ulp/(1+κ)' over both dtypes, fastloss backends pooled."""
    groups, cells = [], {}
    for r in records:
        if "error" in r:
            continue
        g = "fastloss" if r["impl"].startswith("fastloss:") else r["impl"]
        if g not in groups:
            groups.append(g)
        c = cells.setdefault((r["op"], g), [0, 0, 0.0])
        c[0] += r["nonfinite"] + r["special"]
        c[1] += r["zeros"]
        c[2] = max(c[2], r["max_err"])
    ops = list(dict.fromkeys(r["op"] for r in records))
    rows = [[op] + [("{} / {} / {:.3g}".format(*cells[(op, g)]) if (op, g) in cells else "–") for g in groups]
            for op in ops]
    return _table(["op"] + groups, rows)


def summary(results):
    """The README block: stability per op, then fused float32 throughput against the peers."""
    parts = []
    if results.get("stability"):
        parts += ["**Stability** (sweeps over the whole float range vs a 60-digit oracle, float32 + float64; "
                  "cells: wrong non-finite / flushed zeros / max error in ulp/(1+κ); contract: 0 / 0 / ≤ 4 (float32), ≤ 8 (float64))",
                  stability_summary(results["stability"])]
    tp = [r for r in results.get("throughput", []) if r["mode"] == "fused" and r["dtype"] == "float32"]
    if tp:
        parts += ["**Throughput**, fused forward+backward, float32 (best fastloss backend; ratio = peer time / "
                  "fastloss time)", throughput_tables(tp).split("\n\n", 1)[1]]
    return "\n\n".join(parts)


def footnote(meta):
    v = ", ".join(f"{k} {x}" for k, x in meta["versions"].items())
    load = meta.get("load_average")
    busy = f" Load average at start {load[0]:g}." if load else ""
    return (f"<sub>Machine: {meta['cpu']}, {meta['cores']} cores, {meta['os']}.{busy} Versions: {v}. "
            f"fastloss backends: {', '.join(meta['backends'])}. {meta['date']}. "
            f"Command: `{meta['command']}`</sub>")


def markdown(results):
    """The whole report.md from a results dict (see :mod:`fastloss.cli`)."""
    meta = results["meta"]
    parts = ["# fastloss benchmark report", footnote(meta)]
    head = summary(results)
    if head:
        parts += ["## Summary", head]
    bw = results.get("bandwidth")
    if bw:
        parts.append(f"Memory bandwidth measured in this run: copy {bw['copy_gbs']:.1f} GB/s, "
                     f"triad {bw['triad_gbs']:.1f} GB/s one thread, "
                     f"{bw.get('triad_all_threads_gbs') or float('nan'):.1f} GB/s all threads ({bw['triad_impl']}); "
                     f"'% STREAM' is against {bw['peak_gbs']:.1f} GB/s.")
    if results.get("throughput"):
        parts += ["## Throughput", throughput_tables(results["throughput"], bw and bw["peak_gbs"]),
                  "### GB/s of every implementation (fused forward+backward)",
                  per_backend_table(results["throughput"]),
                  "### First-call overhead (JIT / tracing / compile), excluded from the timings above",
                  compile_table(results["compile"])]
    if results.get("stability"):
        parts += ["## Stability against the mpmath oracle",
                  "Dense sweeps of logits over the whole float range (±1e30 and up to the dtype's max, ±inf, "
                  "NaN, masked -inf classes, dominant-label rows, rows shifted by a large offset). "
                  "Contract: no non-finite or zero result where the truth is finite/normal, NaN/inf exactly "
                  "where the truth is, error ≤ 4 ulp·(1+κ) in float32, ≤ 8 ulp·(1+κ) in float64.",
                  stability_table(results["stability"])]
    exps = results.get("experiments") or {}
    if exps:
        parts.append("## Experiments")
    if "neuron" in exps:
        rows = [[k, v["epochs_to_output_below_0.1"] or "never (300)", f"{v['final_output']:.4f}"]
                for k, v in exps["neuron"]["summary"].items()]
        parts += ["### 1. One sigmoid neuron (input 1, target 0, lr 0.15)",
                  _table(["start/loss", "epochs until output < 0.1", "final output"], rows),
                  "![neuron](neuron.png)"]
    if "softmax_grid" in exps:
        st = exps["softmax_grid"]["stats"]
        rows = [[k.split("/")[0], k.split("/")[1], f"{v['max_err']:.3g}", v["nonfinite_rows"], v["rows_err_gt_4"]]
                for k, v in st.items() if "grad_norm" not in k]
        parts += [f"### 2. Three classes, one logit at -1000 ({exps['softmax_grid']['dtype']})",
                  _table(["op", "implementation", "max ulp/(1+κ)", "non-finite rows", "rows > 4"], rows),
                  "![softmax grid](softmax_grid.png)"]
    if "grad_vs_logit" in exps:
        st = exps["grad_vs_logit"]["stats"]
        rows = [k.split("/") + [v["zeros_where_normal"], v["nonfinite"]] for k, v in st.items()]
        parts += ["### 3. Gradient magnitude vs logit",
                  _table(["op", "implementation", "dtype", "zero grads where truth is normal", "non-finite"], rows),
                  "![grad vs logit](grad_vs_logit.png)"]
    if "digits_mlp" in exps:
        fa = exps["digits_mlp"]["final_accuracy"]
        rows = [[k, f"{v:.3f}"] for k, v in fa.items()]
        parts += [f"### 4. NumPy MLP on digits ({exps['digits_mlp']['epochs']} epochs)",
                  _table(["init/loss", "final test accuracy"], rows), "![digits](digits_mlp.png)"]
    parts.append(footnote(meta))
    return "\n\n".join(parts) + "\n"


def write(results, out_dir):
    """Write ``results.json`` and ``report.md`` into ``out_dir``; return the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    md = markdown(results)
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write(md)
    return md


def from_pytest_benchmark(data):
    """Throughput records from a pytest-benchmark ``--benchmark-json`` file's dict."""
    records = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "op" not in info:
            continue
        sec = b["stats"]["min"]  # as time_call: the least disturbed round
        rec = dict(info)
        rec.update(seconds=sec, gbs=info["bytes"] / sec / 1e9)
        if info.get("peak_gbs"):
            rec["frac_peak"] = rec["gbs"] / info["peak_gbs"]
        records.append(rec)
    return records
