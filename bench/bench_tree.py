"""Native knowledge tree vs the pure-Python reference on the same request trace.

Trace (seeded): Zipf(alpha) popularity over --docs documents, --requests
requests of the top-3 documents, document lengths uniform in 64..2048 tokens,
KV bytes from Llama-3.1-8B (bf16), gpu/host budgets of 4/16 GiB, policy PGDSF
with a T(cached, new) profile from the H100 roofline cost model.
Each request is: match, lock the hits, promote hits not in gpu, insert the
missing documents, touch the hits, record the compute of the new ones, unlock.

Modes, interleaved in every repeat (a fresh tree per run):
  reference/calls  pure-Python ReferenceTree, one method call per step
  native/calls     hyperrag.cache.KnowledgeTree, the same calls
  native/access    the native tree, the whole request in one access() call
All three must end in the same state (checked). Reported: median requests/s
(wall clock) and CPU microseconds per request over --repeats, and speedups
against the reference measured in the same repeats from CPU time (robust when
other processes share the cores) and from wall time. The trace is built and
frozen out of the garbage collector before timing, for every mode alike.
Writes bench/results/bench_tree.json.

    python bench/bench_tree.py [--requests 100000] [--repeats 3]
"""
import argparse
import gc
import json
import pathlib
import platform
import statistics
import time

import numpy as np

from hyperrag.cache import CostProfile, KnowledgeTree
from hyperrag.testing.reference_tree import ReferenceCostProfile, ReferenceTree
from hyperrag.costmodel.llm import LLMCostModel
from hyperrag.models import LLMModel

GiB = 1 << 30
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def make_trace(num_docs, num_requests, alpha, top_k, seed):
    """Per request: (doc_ids, doc_tokens, doc_bytes) as plain Python lists."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, num_docs + 1, dtype=np.float64) ** -alpha
    probs = weights / weights.sum()
    lengths = rng.integers(64, 2049, size=num_docs)
    names = [f"doc{i}" for i in rng.permutation(num_docs)]  # popularity unrelated to the id
    kv_per_token = LLMModel.LLAMA_3_1_8B.kv_bytes_per_token()
    trace = []
    draws = rng.choice(num_docs, size=(num_requests, 4 * top_k), p=probs)
    for row in draws:
        picked = list(dict.fromkeys(row.tolist()))[:top_k]
        while len(picked) < top_k:  # rare: too few distinct documents in the row
            d = int(rng.choice(num_docs, p=probs))
            if d not in picked:
                picked.append(d)
        tokens = [int(lengths[d]) for d in picked]
        trace.append(([names[d] for d in picked], tokens, [t * kv_per_token for t in tokens]))
    return trace


def run_calls(tree, trace, ns="llama-3.1-8b/sys"):
    for docs, tokens, nbytes in trace:
        m = tree.match(ns, docs, tokens)
        hits = m.node_ids
        if hits:
            tree.lock(hits)
            if any(t != "gpu" for t in m.tiers):
                tree.promote(hits, "gpu")
        k = m.matched_docs
        if k < len(docs):
            r = tree.insert(ns, docs, tokens, nbytes, "gpu")
        if hits:
            tree.touch(hits)
        if k < len(docs):
            tree.record_compute(r.node_ids[k:], m.matched_tokens, sum(tokens[k:]))
        if hits:
            tree.unlock(hits)


def run_access(tree, trace, ns="llama-3.1-8b/sys"):
    access = tree.access
    for docs, tokens, nbytes in trace:
        access(ns, docs, tokens, nbytes, "gpu")


def summary(tree):
    s = tree.stats()
    return {"num_nodes": s.num_nodes, "used_bytes": dict(s.used_bytes), "evictions": dict(s.evictions),
            "clock": dict(s.clock), "lookups": s.lookups, "hits": s.hits, "hit_tokens": s.hit_tokens,
            "lookup_tokens": s.lookup_tokens}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=1.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-gib", type=float, default=4.0)
    ap.add_argument("--host-gib", type=float, default=16.0)
    ap.add_argument("--policy", default="pgdsf", choices=("pgdsf", "gdsf", "lru", "lfu"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_tree.json"))
    args = ap.parse_args()

    trace = make_trace(args.docs, args.requests, args.alpha, 3, args.seed)
    grid = LLMCostModel(LLMModel.LLAMA_3_1_8B, "H100").profile_grid([0, 1024, 2048, 4096, 8192],
                                                                     [64, 256, 512, 1024, 2048, 4096])
    gc.collect()
    gc.freeze()  # the trace is long-lived: keep collections from rescanning it
    caps = {"gpu": int(args.gpu_gib * GiB), "host": int(args.host_gib * GiB)}
    modes = {
        "reference/calls": (lambda: ReferenceTree(caps, args.policy, ReferenceCostProfile(*grid)), run_calls),
        "native/calls": (lambda: KnowledgeTree(caps, args.policy, CostProfile(*grid)), run_calls),
        "native/access": (lambda: KnowledgeTree(caps, args.policy, CostProfile(*grid)), run_access),
    }
    seconds = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    final = {}
    for _ in range(args.repeats):
        for mode, (build, run) in modes.items():
            tree = build()
            c0, t0 = time.process_time(), time.perf_counter()
            run(tree, trace)
            seconds[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
            final[mode] = summary(tree)
    same_state = all(final[m] == final["reference/calls"] for m in modes)
    if not same_state:
        raise SystemExit(f"modes disagree on the final state: {json.dumps(final, indent=1)}")

    rows = []
    for mode in modes:
        # Ratios within each repeat (side by side), then the median.
        cpu_ratio = [b / s for b, s in zip(cpu["reference/calls"], cpu[mode])]
        wall_ratio = [b / s for b, s in zip(seconds["reference/calls"], seconds[mode])]
        rows.append({"mode": mode, "requests_per_s": statistics.median(args.requests / s for s in seconds[mode]),
                     "cpu_us_per_request": 1e6 * statistics.median(cpu[mode]) / args.requests,
                     "speedup_cpu": statistics.median(cpu_ratio), "speedup_wall": statistics.median(wall_ratio),
                     "wall_seconds": seconds[mode], "cpu_seconds": cpu[mode]})
    s = final["native/access"]
    title = (f"KnowledgeTree, {args.requests} requests, Zipf {args.alpha} over {args.docs} docs, "
             f"policy {args.policy}, median of {args.repeats}")
    print(title)
    print(f"{'mode':<18}{'requests/s':>12}{'CPU us/req':>12}{'speedup (CPU)':>15}{'speedup (wall)':>16}")
    for r in rows:
        print(f"{r['mode']:<18}{r['requests_per_s']:>12,.0f}{r['cpu_us_per_request']:>12.2f}"
              f"{r['speedup_cpu']:>14.1f}x{r['speedup_wall']:>15.1f}x")
    hit_rate = s["hit_tokens"] / s["lookup_tokens"]
    print(f"final state identical in all modes: {same_state}; nodes {s['num_nodes']}, "
          f"token hit rate {hit_rate:.3f}, evictions {s['evictions']}")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "bench_tree", "config": vars(args), "machine": platform.processor() or platform.machine(),
        "rows": rows, "final_state": s, "token_hit_rate": hit_rate, "same_state_all_modes": same_state,
    }, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
