"""Turn a pytest-benchmark JSON file into the README's Markdown ratio tables.

Usage::

    pytest bench/test_throughput.py --benchmark-enable --bench-sizes=quick --benchmark-json=bench.json
    python bench/report.py bench.json [-o bench.md]

The tables are footnoted with the machine, the versions and the command that
produced the JSON (pytest-benchmark records it).
"""
from __future__ import annotations

import argparse
import json
import sys

from fastloss._bench import report


def render(data, command=None):
    """Markdown for a pytest-benchmark JSON dict."""
    records = report.from_pytest_benchmark(data)
    meta = report.machine_info(command or "pytest " + " ".join(data.get("commit_info", {}).get("argv", [])))
    if "machine_info" in data:
        mi = data["machine_info"]
        meta["cpu"] = mi.get("cpu", {}).get("brand_raw", meta["cpu"])
    bw = next((b["extra_info"] for b in data.get("benchmarks", [])
               if "copy_gbs" in b.get("extra_info", {})), None)
    for r in records:
        r["compile_s"] = max(r.get("first_call_s", 0.0) - r["seconds"], 0.0)
    parts = [report.throughput_tables(records, bw and bw["peak_gbs"]),
             "GB/s of every implementation (fused forward+backward):", report.per_backend_table(records),
             report.compile_table(report.compile_summary(records)), report.footnote(meta)]
    if bw:
        parts.insert(0, f"Memory bandwidth in this run: copy {bw['copy_gbs']:.1f} GB/s, "
                        f"triad {bw['triad_gbs']:.1f} GB/s.")
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="pytest-benchmark --benchmark-json output")
    p.add_argument("-o", "--output", help="write the Markdown here (default: stdout)")
    p.add_argument("--command", help="command to cite in the footnote (default: from the JSON)")
    args = p.parse_args(argv)
    with open(args.json) as fh:
        data = json.load(fh)
    md = render(data, args.command)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(md)
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
