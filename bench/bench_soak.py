"""Soak: a long stream of mostly new documents through one simulated controller.

Each query retrieves ``--popular`` documents drawn by Zipf from a small popular
set (these repeat and hit) followed by ``--fresh`` documents never seen before,
so 50,000 queries bring over a million distinct document ids. The cache fills
within the first queries; after that every query evicts. Every ``--every``
queries the run records the tree's nodes and interned names, the cache's
document-version records and the process RSS. Names must stay bounded by the
resident nodes plus a constant, and RSS must stay flat after the cache fills
(the slope of a least-squares line over the second half is reported).

    python bench/bench_soak.py [--queries 50000] [--fresh 20] [--popular 4]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from hyperrag import RAGOptimize, RAGOptimizeConfig
from hyperrag.serve import Query
from hyperrag.serve import bench as B

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1 << 20)


def stream(num_queries: int, fresh: int, popular: int, popular_set: int, seed: int):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, popular_set + 1) ** 1.1
    weights /= weights.sum()
    lengths = rng.integers(48, 96, size=popular_set)
    for i in range(num_queries):
        hot = rng.choice(popular_set, size=popular, replace=False, p=weights)
        ids = [f"p{h}" for h in hot] + [f"f{i * fresh + j}" for j in range(fresh)]
        toks = [int(lengths[h]) for h in hot] + [int(t) for t in rng.integers(48, 96, size=fresh)]
        yield Query(query_id=f"q{i}", text="?", doc_ids=ids, doc_tokens=toks)


def soak(args) -> dict:
    rago = RAGOptimize(RAGOptimizeConfig(gpu_budget_gb=args.gpu_gb, host_budget_gb=args.host_gb))
    # Small real pools (storage_scale): the run measures bookkeeping, not memcpy.
    ctrl = rago.build_controller(storage_scale=args.storage_scale, block_bytes=4096)
    cache = ctrl.cache
    samples = []
    start = time.perf_counter()
    for i, q in enumerate(stream(args.queries, args.fresh, args.popular, args.popular_set, args.seed), 1):
        ctrl.process(q)
        if i % args.every == 0 or i == args.queries:
            s = cache.stats()
            samples.append({"queries": i, "distinct_docs": i * args.fresh + min(args.popular_set, i * args.popular),
                            "num_nodes": int(s.num_nodes), "interned_names": int(s.interned_names),
                            "version_records": len(cache._versions), "rss_mib": rss_mib(),
                            "elapsed_s": time.perf_counter() - start})
    evictions = sum(dict(cache.stats().evictions).values())
    fill = next((r["queries"] for r in samples if r["num_nodes"] >= 0.95 * max(x["num_nodes"] for x in samples)),
                samples[0]["queries"])
    tail = samples[len(samples) // 2:]
    slope = np.polyfit([r["queries"] for r in tail], [r["rss_mib"] for r in tail], 1)[0] * 10_000
    return {
        "rows": samples,
        "summary": {
            "queries": args.queries,
            "distinct_docs": samples[-1]["distinct_docs"],
            "evictions": int(evictions),
            "fill_queries": fill,
            "rss_fill_mib": next(r["rss_mib"] for r in samples if r["queries"] >= fill),
            "rss_end_mib": samples[-1]["rss_mib"],
            "rss_slope_mib_per_10k_queries": float(slope),
            "max_names_minus_nodes": max(r["interned_names"] - r["num_nodes"] for r in samples),
            "max_version_records": max(r["version_records"] for r in samples),
            "max_nodes": max(r["num_nodes"] for r in samples),
            "stream": f"{args.popular} Zipf-popular of {args.popular_set} + {args.fresh} fresh documents per query",
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--fresh", type=int, default=20, help="never-seen documents per query")
    ap.add_argument("--popular", type=int, default=4, help="documents per query from the popular set")
    ap.add_argument("--popular-set", type=int, default=1000)
    ap.add_argument("--gpu-gb", type=float, default=1.0)
    ap.add_argument("--host-gb", type=float, default=4.0)
    ap.add_argument("--storage-scale", type=int, default=1 << 12)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = soak(args)
    s = out["summary"]
    B.print_table(f"Soak: {s['queries']:,} queries, {s['distinct_docs']:,} distinct documents ({s['stream']})",
                  out["rows"][:: max(1, len(out["rows"]) // 10)] + out["rows"][-1:], SOAK_COLUMNS)
    print(f"RSS slope after the cache filled (second half): {s['rss_slope_mib_per_10k_queries']:+.2f} MiB per 10k "
          f"queries; RSS {s['rss_fill_mib']:.0f} MiB when full, {s['rss_end_mib']:.0f} MiB at the end; "
          f"interned names - nodes <= {s['max_names_minus_nodes']}; version records <= {s['max_version_records']:,} "
          f"(nodes <= {s['max_nodes']:,}); {s['evictions']:,} evictions")
    path = B.write_json("bench_soak", out["rows"], vars(args), summary=s)
    print("wrote", path)


SOAK_COLUMNS = (
    ("queries", "queries", ","), ("distinct docs", "distinct_docs", ","), ("nodes", "num_nodes", ","),
    ("interned names", "interned_names", ","), ("version records", "version_records", ","),
    ("RSS MiB", "rss_mib", ".1f"), ("elapsed s", "elapsed_s", ".0f"),
)

if __name__ == "__main__":
    main()
