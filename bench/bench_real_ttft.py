"""Real TTFT against what users run today: SmolLM2-135M (bf16, CPU), side by side.

Systems, all on the same loaded model, the same token ids and the same attention path:
  no_reuse      every prompt prefilled from scratch in one forward
  prefix_cache  a token-level prefix cache (radix tree over token ids, LRU, the
                capacity of HyperRAG's tiers): the longest cached token prefix is
                reused, question included on exact repeats (vLLM's, SGLang's)
  hyperrag      RAGServeController + KVCache, documents in retrieval order
  hyperrag_ca   the same with cache-aware document order
  hyperrag_ca_rp  cache-aware order and the reused_prefix admission policy
Streams:
  bundled   the bundled query set (Zipf 1.1 targets over 300 documents), top-3 of an
            exact MiniLM + FAISS search; its exact-repeat rate is reported
  norepeat  documents drawn Zipf 1.1 over the same 300, top-3, a fresh question for
            every query: no question repeats
Every stream runs --passes times from cold caches, the systems interleaved query by
query; each query's TTFT is the median over passes. TTFT is the wall time from the
call to the first token (tokenizing, cache lookups and reads, prefill). Reported per
system: mean, median, p90, p99, document-token hit rate, TTFT by hit pattern, and
for HyperRAG the bytes stored and hit per byte stored. Also: an attention ablation
(stock SDPA vs the prefix-friendly path, measured in alternation, which sets the
engine's default), and how
often the 16-token greedy answer changes when the documents are put in the
cache-aware order instead of retrieval order (bundled queries, no reuse).

    python bench/bench_real_ttft.py [--queries 100] [--passes 3] [--gpu-mb 1024] [--host-mb 4096]
Writes bench/results/bench_real_ttft.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hyperrag import RAGOptimize, RAGOptimizeConfig
from hyperrag.data import load_corpus, load_queries
from hyperrag.engines.base import PrefillRequest
from hyperrag.engines.transformers_engine import TransformersEngine
from hyperrag.retrieval import FaissRetriever, HashingEmbedder, MiniLMEmbedder
from hyperrag.serve import Query
from hyperrag.serve import bench as B

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_prefix_cache import TokenPrefixCache  # noqa: E402

HYPERRAG = {"hyperrag": dict(doc_order="retrieval"), "hyperrag_ca": dict(doc_order="cache_aware"),
            "hyperrag_ca_rp": dict(doc_order="cache_aware", admission="reused_prefix")}
SYSTEMS = ("no_reuse", "prefix_cache", *HYPERRAG)
ANSWER_TOKENS = 16


def bundled_stream(n, texts, retriever):
    queries = load_queries(n)
    return [(q.text, retriever.search_exact(q.text, 3).doc_ids) for q in queries]


def norepeat_stream(n, texts, seed):
    rng = np.random.default_rng(seed)
    ids = sorted(texts)
    rank = rng.permutation(len(ids))  # which document has which popularity
    weights = 1.0 / np.arange(1, len(ids) + 1) ** 1.1
    p = weights[rank] / weights.sum()
    out = []
    for i in range(n):
        docs = [ids[j] for j in rng.choice(len(ids), size=3, replace=False, p=p)]
        out.append((f"Request {i}: what do these documents say, in one sentence?", docs))
    return out


def repeat_rates(stream):
    questions, prompts, seen_q, seen_p = 0, 0, set(), set()
    for question, docs in stream:
        questions += question in seen_q
        prompts += (question, tuple(docs)) in seen_p
        seen_q.add(question)
        seen_p.add((question, tuple(docs)))
    return {"repeated_question_rate": questions / len(stream), "repeated_prompt_rate": prompts / len(stream)}


def one_pass(engine, rago, stream, texts, args):
    """Serve the stream once on cold caches; per query, each system's TTFT and reuse."""
    capacity = (args.gpu_mb + args.host_mb) << 20
    prefix = TokenPrefixCache(engine, capacity)
    ctrls = {name: rago.build_controller(engine=engine, default_output_tokens=1, gpu_bytes=args.gpu_mb << 20,
                                         host_bytes=args.host_mb << 20, **kw) for name, kw in HYPERRAG.items()}
    ns = engine.namespace()
    system_tokens = len(engine.system_ids())
    rows = []
    for i, (question, docs) in enumerate(stream):
        t0 = time.perf_counter()
        prompt = engine.prompt(docs, doc_texts=[texts[d] for d in docs], question=question)
        tokenize_s = time.perf_counter() - t0
        # Up to the first token: the engine's own measure (it then copies out KV no baseline needs).
        first_token_s = engine.prefill(PrefillRequest(ns, prompt)).seconds
        row = {"no_reuse": {"ttft_s": tokenize_s + first_token_s, "cached_doc_tokens": 0},
               "doc_tokens": sum(prompt.segment_tokens[1:])}
        ids = [t for seg in prompt.token_ids for t in seg] + list(prompt.question_ids)
        r = prefix.prefill(ids)
        row["prefix_cache"] = {"ttft_s": r.ttft_s, "cached_doc_tokens": min(row["doc_tokens"],
                                                                            max(0, r.cached_tokens - system_tokens))}
        for name, ctrl in ctrls.items():
            q = Query(f"q{i}", question, list(docs), doc_texts=[texts[d] for d in docs])
            res = ctrl.process(q)
            row[name] = {"ttft_s": res.ttft_s, "cached_doc_tokens": max(0, res.cached_tokens - system_tokens),
                         "matched_docs": res.matched_docs}
        rows.append(row)
    stored = {}
    for name, ctrl in ctrls.items():
        s = ctrl.cache.stats()
        stored[name] = {"nodes": int(s.num_nodes), "stored_mib": sum(dict(s.used_bytes).values()) / (1 << 20),
                        "evictions": {k: int(v) for k, v in dict(s.evictions).items()}}
    return rows, stored


def summarize(passes, stream):
    """Per query: the median TTFT over passes; then statistics over queries per system."""
    n = len(stream)
    per_query = []
    for i in range(n):
        row = {"docs": stream[i][1], "doc_tokens": passes[0][i]["doc_tokens"]}
        for sysname in SYSTEMS:
            row[sysname] = statistics.median(p[i][sysname]["ttft_s"] for p in passes)
            row[f"{sysname}_cached"] = passes[0][i][sysname]["cached_doc_tokens"]
        for name in HYPERRAG:
            row[f"{name}_matched"] = passes[0][i][name]["matched_docs"]
        per_query.append(row)
    total_doc = sum(r["doc_tokens"] for r in per_query)
    systems = {}
    for sysname in SYSTEMS:
        t = np.array([r[sysname] for r in per_query])
        systems[sysname] = {"mean_s": float(t.mean()), "median_s": float(np.median(t)),
                            "p90_s": float(np.percentile(t, 90)), "p99_s": float(np.percentile(t, 99)),
                            "doc_token_hit_rate": sum(r[f"{sysname}_cached"] for r in per_query) / total_doc}
    patterns = {}
    for name in HYPERRAG:
        for pattern, test in (("full hit", lambda r: r[f"{name}_matched"] == len(r["docs"])),
                              ("partial", lambda r: 0 < r[f"{name}_matched"] < len(r["docs"])),
                              ("miss", lambda r: r[f"{name}_matched"] == 0)):
            sel = [r for r in per_query if test(r)]
            if sel:
                patterns[f"{name}/{pattern}"] = {
                    "queries": len(sel), "mean_s": statistics.mean(r[name] for r in sel),
                    "no_reuse_mean_s": statistics.mean(r["no_reuse"] for r in sel),
                    "median_ratio_to_no_reuse": statistics.median(r[name] / r["no_reuse"] for r in sel)}
    return per_query, systems, patterns


def attention_ablation(args, texts, docs, question):
    """TTFT of one prompt with 0..all segments cached, stock SDPA vs the prefix-friendly path;
    both engines alive and measured in alternation, so load affects them alike."""
    engines = {impl: TransformersEngine(args.model, attn_implementation=impl) for impl in ("sdpa", "hyperrag_prefix")}
    first = next(iter(engines.values()))
    prompt = first.prompt(docs, doc_texts=[texts[d] for d in docs], question=question)
    full = first.prefill(PrefillRequest(first.namespace(), prompt))
    rows = []
    for m in range(len(prompt.segment_ids) + 1):  # nothing, the system prompt, then 1..3 documents
        times = {impl: [] for impl in engines}
        for _ in range(args.repeats):
            for impl, engine in engines.items():
                times[impl].append(engine.prefill(PrefillRequest(engine.namespace(), prompt, full.new_kv[:m])).seconds)
        rows += [{"attention": impl, "cached_segments": m, "cached_tokens": sum(kv.tokens for kv in full.new_kv[:m]),
                  "ttft_s": statistics.median(t)} for impl, t in times.items()]
    return rows


def order_quality(engine, rago, stream, texts):
    """How often the greedy answer changes when the documents come in the cache-aware order a
    controller chose (after serving the stream) instead of retrieval order (no reuse either way)."""
    ctrl = rago.build_controller(engine=engine, default_output_tokens=1, doc_order="cache_aware")
    changed = reordered = 0
    ns = engine.namespace()
    for i, (question, docs) in enumerate(stream):
        order = ctrl.process(Query(f"o{i}", question, list(docs), doc_texts=[texts[d] for d in docs])).doc_order
        if order == list(docs):
            continue
        reordered += 1
        answers = []
        for ids in (docs, order):
            prompt = engine.prompt(list(ids), doc_texts=[texts[d] for d in ids], question=question)
            answers.append(engine.generate(PrefillRequest(ns, prompt), ANSWER_TOKENS).token_ids)
        changed += answers[0] != answers[1]
    return {"queries": len(stream), "reordered": reordered, "answer_changed": changed}


def add_common_arguments(ap):
    """The model, cache budgets, threads and streams: what the real-model benchmarks share."""
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--gpu-mb", type=int, default=1024, help="KV budget of the gpu tier (MiB)")
    ap.add_argument("--host-mb", type=int, default=4096, help="KV budget of the host tier (MiB)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--streams", default="norepeat,bundled")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="repeats per point of the attention ablation")
    add_common_arguments(ap)
    ap.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    corpus = load_corpus()
    texts = {d.doc_id: d.text for d in corpus}
    engine = TransformersEngine(args.model)
    rago = RAGOptimize(RAGOptimizeConfig())
    rago.optimize()
    streams = {}
    if "bundled" in args.streams:
        embedder = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder()
        retriever = FaissRetriever(embedder, [d.title + ". " + d.text for d in corpus], [d.doc_id for d in corpus])
        streams["bundled"] = bundled_stream(args.queries, texts, retriever)
    if "norepeat" in args.streams:
        streams["norepeat"] = norepeat_stream(args.queries, texts, args.seed)
    first = next(iter(streams.values()))[0]
    engine.prefill(PrefillRequest(engine.namespace(), engine.prompt(  # warm-up: allocator, kernels
        first[1], doc_texts=[texts[d] for d in first[1]], question=first[0])))

    ablation = attention_ablation(args, texts, first[1], first[0])
    out = {}
    for name, stream in streams.items():
        passes, stored = [], None
        for p in range(args.passes):
            rows, stored = one_pass(engine, rago, stream, texts, args)
            passes.append(rows)
            print(f"  {name}: pass {p + 1}/{args.passes} done", flush=True)
        per_query, systems, patterns = summarize(passes, stream)
        for hname in HYPERRAG:
            hit = systems[hname]["doc_token_hit_rate"] * sum(r["doc_tokens"] for r in per_query)
            stored[hname]["hit_doc_tokens_per_mib_stored"] = hit / max(stored[hname]["stored_mib"], 1e-9)
        out[name] = {"repeats": repeat_rates(stream), "systems": systems, "by_pattern": patterns, "storage": stored,
                     "queries": per_query}
        B.print_table(f"{name}: {len(stream)} queries, median of {args.passes} passes per query "
                      f"(repeated questions {out[name]['repeats']['repeated_question_rate']:.0%})",
                      [{"system": k, **v} for k, v in systems.items()], COLUMNS)
    quality = order_quality(engine, rago, streams.get("bundled") or next(iter(streams.values())), texts)
    print(f"cache-aware order: {quality['reordered']} of {quality['queries']} queries reordered, "
          f"{quality['answer_changed']} greedy {ANSWER_TOKENS}-token answers changed")
    summary = {name: {"systems": v["systems"], "repeats": v["repeats"], "storage": v["storage"],
                      "by_pattern": v["by_pattern"]} for name, v in out.items()}
    summary["order_quality"] = quality
    summary["attention_ablation"] = ablation
    summary["threads"] = torch.get_num_threads()
    rows = [{"stream": name, "query": i, **q} for name, v in out.items() for i, q in enumerate(v["queries"])]
    path = B.write_json("bench_real_ttft", rows, vars(args), summary=summary, engine="transformers")
    print("wrote", path)


COLUMNS = (("system", "system", "s"), ("mean", "mean_s", B.ms), ("median", "median_s", B.ms), ("p90", "p90_s", B.ms),
           ("p99", "p99_s", B.ms), ("doc token hit", "doc_token_hit_rate", ".1%"))

if __name__ == "__main__":
    main()
