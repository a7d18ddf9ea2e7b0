"""`hyperrag bench`: baseline vs HyperRAG per paradigm on the simulated engine."""
from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of tables")
    parser.add_argument("--out", type=output_dir, default=None, metavar="DIR",
                        help="also write the rows to DIR/bench_paradigms.json (and bench_ablations.json; "
                             "the folder is created if missing)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_bench(args: argparse.Namespace) -> int:
    from hyperrag.serve import bench as B

    paradigms = PARADIGMS if args.paradigm == "all" else (args.paradigm,)
    show = not args.no_progress
    options = {k: v for k, v in vars(args).items() if k not in _DISPATCH_KEYS}
    results = {"paradigms": B.bench_paradigms(paradigms, args.queries, args.repeats, args.load, args.zipf_alpha,
                                              show)}
    if args.ablations:
        results["ablations"] = B.bench_ablations(paradigms, args.queries, args.repeats, zipf_alpha=args.zipf_alpha,
                                                 show_progress=show)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        B.print_table(f"TTFT, {args.queries} queries, Zipf {args.zipf_alpha}, load {args.load} "
                      f"(median of {args.repeats} seeds, simulated engine)", results["paradigms"], B.PARADIGM_COLUMNS)
        if args.ablations:
            B.print_table("Ablations (cache on)", results["ablations"], B.ABLATION_COLUMNS)
    if args.out:
        for name, rows in results.items():
            B.write_json(f"bench_{name}", rows, options, args.out)
    return 0


def main(argv=None) -> int:
    """`python -m hyperrag.serve.cli ...` is `hyperrag bench ...`, with the same checks and error lines."""
    from hyperrag.cli import main as hyperrag_main

    return hyperrag_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
