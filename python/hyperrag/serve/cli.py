"""`hyperrag bench`: baseline vs HyperRAG per paradigm on the simulated engine."""
from __future__ import annotations

import argparse
import sys

from hyperrag.cli import open_fraction, output_dir, positive_float, positive_int
from hyperrag.workloads import PARADIGMS

# Entries of the parsed namespace that the `hyperrag` dispatcher adds; not options of the benchmark.
_DISPATCH_KEYS = ("command", "func")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paradigm", default="all", choices=("all",) + PARADIGMS,
                        help="paradigm to benchmark (default: all four)")
    parser.add_argument("--queries", type=positive_int, default=1000,
                        help="queries per paradigm and seed (default 1000)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="seeds per experiment; medians are reported")
    parser.add_argument("--load", type=open_fraction, default=0.6,
                        help="arrival rate as a fraction of the no-cache baseline's capacity, in (0, 1)")
    parser.add_argument("--zipf-alpha", type=positive_float, default=1.1, help="document popularity skew (> 0)")
    parser.add_argument("--ablations", action="store_true",
                        help="also run reordering / speculative pipelining on-off ablations")
    parser.add_argument("--json", type=output_dir, default=None, metavar="DIR",
                        help="also write the rows to this directory as JSON (created if missing)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_bench(args: argparse.Namespace) -> int:
    from hyperrag.serve import bench as B

    paradigms = PARADIGMS if args.paradigm == "all" else (args.paradigm,)
    show = not args.no_progress
    options = {k: v for k, v in vars(args).items() if k not in _DISPATCH_KEYS}
    rows = B.bench_paradigms(paradigms, args.queries, args.repeats, args.load, args.zipf_alpha, show)
    B.print_table(f"TTFT, {args.queries} queries, Zipf {args.zipf_alpha}, load {args.load} "
                  f"(median of {args.repeats} seeds, simulated engine)", rows, B.PARADIGM_COLUMNS)
    if args.json:
        B.write_json("bench_paradigms", rows, options, args.json)
    if args.ablations:
        abl = B.bench_ablations(paradigms, args.queries, args.repeats, zipf_alpha=args.zipf_alpha,
                                show_progress=show)
        B.print_table("Ablations (cache on)", abl, B.ABLATION_COLUMNS)
        if args.json:
            B.write_json("bench_ablations", abl, options, args.json)
    return 0


def main(argv=None) -> int:
    """`python -m hyperrag.serve.cli ...` is `hyperrag bench ...`, with the same checks and error lines."""
    from hyperrag.cli import main as hyperrag_main

    return hyperrag_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
