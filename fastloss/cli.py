"""The ``fastloss`` command line: ``fastloss bench`` (also ``python -m fastloss bench``).

Runs the throughput benchmark, the stability benchmark against the mpmath
oracle and the classic experiments, prints the tables and writes a report
folder (``report.md`` with the PNG plots, ``results.json`` with every number).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

#: throughput settings per size set: (min seconds per timed batch, batches)
TIMING = {"tiny": (0.002, 2), "quick": (0.03, 3), "full": (0.2, 5)}


class Progress:
    """A one-line progress bar on stderr (no dependency); silent when disabled."""

    def __init__(self, total, *, enabled=True, width=30, stream=None):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def __call__(self, label=""):
        self.done += 1
        if not self.enabled:
            return
        tty = getattr(self.stream, "isatty", lambda: False)()
        # not a terminal (CI logs): one line per tenth instead of a redrawn bar
        if not tty and self.done * 10 // self.total == (self.done - 1) * 10 // self.total:
            return
        filled = int(self.width * min(self.done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.t0
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label[:60]:<60}"
        self.stream.write(("\r" + line) if tty else (line.rstrip() + "\n"))
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser():
    p = argparse.ArgumentParser(prog="fastloss", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="throughput, stability and the classic experiments; writes a report")
    b.add_argument("--full", action="store_true", help="full sizes (up to 2^24 elements, 256x128256), "
                   "longer timings, torch.compile peer")
    b.add_argument("--sizes", choices=sorted(TIMING), help="size set (default: quick, or full with --full)")
    b.add_argument("--backends", type=_csv, help="fastloss backends (default: every available CPU backend)")
    b.add_argument("--dtypes", type=_csv, default=["float32", "float64"])
    b.add_argument("--ops", type=_csv, help="losses (default: every loss in fastloss.registry.LOSSES)")
    b.add_argument("--peers", type=_csv, default=["numpy", "torch", "jax"],
                   help="peers: numpy (textbook), torch, jax, torch.compile (added by --full)")
    b.add_argument("--out", default="report", help="report folder (default ./report)")
    b.add_argument("--skip-throughput", action="store_true")
    b.add_argument("--skip-stability", action="store_true")
    b.add_argument("--skip-experiments", action="store_true")
    b.add_argument("--grid", type=int, default=100, help="softmax-grid experiment: points per axis (100)")
    b.add_argument("--epochs", type=int, help="digits MLP epochs (default 25, 40 with --full)")
    b.add_argument("--forward-only", action="store_true", help="time the forward pass only")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--quiet", action="store_true", help="do not print the tables")
    return p


def _select(args):
    import fastloss
    from fastloss import registry
    avail = [b for b in fastloss.available_backends() if b != "cuda"]  # host-array benchmarks only
    backends = args.backends or avail
    unknown = [b for b in backends if b not in avail]
    if unknown:
        raise SystemExit(f"fastloss bench: backend(s) not available here: {', '.join(unknown)}; "
                         f"available: {', '.join(avail)}")
    ops = args.ops or list(registry.LOSSES)
    bad = [o for o in ops if o not in registry.LOSSES]
    if bad:
        raise SystemExit(f"fastloss bench: unknown op(s) {', '.join(bad)}; known: {', '.join(registry.LOSSES)}")
    for dt in args.dtypes:
        if dt not in ("float32", "float64"):
            raise SystemExit(f"fastloss bench: dtypes must be float32 or float64; got {dt!r}")
    return backends, ops


def run_bench(args, argv=None):
    """Run what ``args`` asks for; return the results dict (also written to ``args.out``)."""
    from fastloss._bench import experiments, peers, report, stability, throughput, timing

    backends, ops = _select(args)
    sizes = args.sizes or ("full" if args.full else "quick")
    mine = peers.fastloss_peers(backends)
    ext, missing = peers.external_peers(tuple(args.peers), full=args.full)
    modes = ("forward",) if args.forward_only else throughput.MODES
    os.makedirs(args.out, exist_ok=True)

    n_tp = 0 if args.skip_throughput else len(throughput.plan(mine + ext, ops, args.dtypes, sizes, modes)) + 1
    n_st = 0 if args.skip_stability else len(ops) * len(args.dtypes) * (len(mine) + len(ext))
    n_ex = 0 if args.skip_experiments else 4
    bar = Progress(n_tp + n_st + n_ex, enabled=not args.no_progress)

    command = "fastloss " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    results = {"meta": report.machine_info(command), "sizes": sizes, "missing_peers": missing}
    results["meta"]["size_set"] = sizes
    if not args.skip_throughput:
        bar("memory bandwidth (copy/triad)")
        bw = timing.memory_bandwidth(n=(1 << 24) if sizes == "full" else (1 << 22 if sizes == "tiny" else 1 << 23))
        results["bandwidth"] = bw
        min_time, repeats = TIMING[sizes]
        recs = throughput.run(mine + ext, ops, args.dtypes, sizes, peak_gbs=bw["peak_gbs"], modes=modes,
                              min_time=min_time, repeats=repeats, progress=bar)
        results["throughput"] = recs
        results["ratios"] = throughput.ratios(recs)
        results["compile"] = report.compile_summary(recs)
    oracle = None
    if not (args.skip_stability and args.skip_experiments):
        try:
            from fastloss import oracle
        except ImportError as exc:  # the oracle needs mpmath
            results["oracle_missing"] = str(exc)
    if not args.skip_stability and oracle is not None:
        results["stability"] = stability.run(mine + ext, ops, args.dtypes, oracle=oracle, progress=bar)
    if not args.skip_experiments:
        exps = {}
        bar("experiment 1: one sigmoid neuron")
        exps["neuron"] = experiments.neuron(args.out, backend=backends[0])
        bar("experiment 4: MLP on digits")
        try:
            exps["digits_mlp"] = experiments.digits_mlp(args.out, epochs=args.epochs or (40 if args.full else 25),
                                                       backend=backends[0])
        except ImportError as exc:  # scikit-learn missing
            exps["digits_mlp_missing"] = str(exc)
        bar("experiment 2: softmax grid")
        if oracle is not None:
            exps["softmax_grid"] = experiments.softmax_grid(args.out, mine[:1] + ext, oracle=oracle, n=args.grid)
        bar("experiment 3: gradient vs logit")
        if oracle is not None:
            exps["grad_vs_logit"] = experiments.grad_vs_logit(args.out, mine[:1] + ext, oracle=oracle)
        results["experiments"] = exps
    bar.close()
    md = report.write(results, args.out)
    if not args.quiet:
        print(md)
        print(f"report written to {os.path.join(args.out, 'report.md')} (numbers: results.json)")
    return results


def main(argv=None):
    """Console-script entry point (``fastloss = "fastloss.cli:main"``)."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        run_bench(args, argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
