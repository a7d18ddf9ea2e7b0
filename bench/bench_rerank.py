"""Decoder reranking with document-KV reuse: throughput, fidelity of reuse and int8, quality.

SmolLM2-135M-Instruct (bf16) reranks the bundled corpus's MiniLM + FAISS
candidates for the bundled labelled queries (each query's source document is
the relevant one), side by side in one run:

- throughput: candidates scored per second at 20 and 50 candidates per query
  for query-first full prefill (the conventional cross-encoder layout),
  document-first full prefill, and document-first on stored document KV (raw
  bf16, and int8), the corpus indexed beforehand (``KVReuseReranker.index``,
  its cost reported). Median over repeats, systems interleaved per repeat.
- fidelity: score deviation and top-5 overlap against document-first full
  prefill, for the model's own variation across forward shapes (the same
  prompts one at a time), for reuse, and for int8 at each scale granularity.
- quality: MRR@10 and recall@3 of MiniLM cosine alone and of each reranker,
  both scorings (yes/no judgement, query likelihood).

    python bench/bench_rerank.py [--throughput-queries 3] [--repeats 3] [--fidelity-queries 12]
                                 [--quality-queries 100]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

GRANULARITIES = ("int8", "int8-ktoken-vtoken", "int8-kchannel-vchannel", "int8-ktoken-vchannel")


def distinct_queries(limit: int):
    from hyperrag.data import load_queries

    seen, out = set(), []
    for q in load_queries():
        if q.text not in seen:
            seen.add(q.text)
            out.append(q)
        if len(out) == limit:
            break
    return out


def ranks_of(scores: np.ndarray, ids, target: str) -> float:
    """The target's rank (1 = best); ties count half, as random tie-breaking would on average."""
    if target not in ids:
        return float("inf")
    t = scores[ids.index(target)]
    others = np.delete(scores, ids.index(target))
    return 1 + float((others > t).sum()) + 0.5 * float((others == t).sum())


def quality(ranks) -> dict:
    r = np.array(ranks)
    return {"mrr_at_10": float(np.mean(np.where(r <= 10, 1 / r, 0.0))), "recall_at_3": float(np.mean(r <= 3)),
            "queries": len(r)}


def deviation(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a - b)
    return {"max": float(d.max()), "mean": float(d.mean()), "p90": float(np.percentile(d, 90))}


def top5_overlap(a: np.ndarray, b: np.ndarray) -> float:
    return len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--throughput-queries", type=int, default=3, help="queries per system per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--candidates", default="20,50", help="candidates per query for the throughput runs")
    ap.add_argument("--fidelity-queries", type=int, default=12)
    ap.add_argument("--quality-queries", type=int, default=100)
    ap.add_argument("--quality-candidates", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args()

    import torch

    from hyperrag.data import load_corpus
    from hyperrag.rerank import KVReuseReranker
    from hyperrag.retrieval import FaissRetriever, MiniLMEmbedder
    from hyperrag.serve import bench as B

    torch.manual_seed(0)
    corpus = load_corpus()
    texts = {d.doc_id: d.text for d in corpus}
    all_ids = [d.doc_id for d in corpus]
    retriever = FaissRetriever(MiniLMEmbedder(), [d.title + ". " + d.text for d in corpus], all_ids)
    candidate_counts = [int(x) for x in args.candidates.split(",")]
    queries = distinct_queries(max(args.quality_queries, args.fidelity_queries,
                                   args.throughput_queries * args.repeats))
    candidates = {}

    def cands(q, n):
        key = (q.query_id, n)
        if key not in candidates:
            r = retriever.search_exact(q.text, n)
            candidates[key] = (list(r.doc_ids), np.array(r.scores, dtype=np.float32))
        return candidates[key]

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    # Memory for the whole corpus in every store, so timed runs never evict or go to disk.
    kw = {"max_batch": args.max_batch, "capacities": {"host": 4 << 30}}
    print("indexing the corpus (raw bf16 KV to a directory) ...", flush=True)
    doc_texts = [texts[d] for d in all_ids]
    raw = KVReuseReranker("smollm2", directory=work / "kv", **kw)
    report = raw.index(all_ids, doc_texts, progress=True)
    index = {"documents": report.documents, "seconds": report.seconds,
             "docs_per_s": report.computed / report.seconds, **report.per_document()}
    # Each int8 variant reads the raw files and keeps int8 in memory: the same KV, encoded per codec.
    int8 = {g: KVReuseReranker("smollm2", directory=work / "kv", codecs={"memory": g}, **kw) for g in GRANULARITIES}
    for g, r in int8.items():
        index[f"stored_bytes_{g}"] = r.index(all_ids, doc_texts).per_document()["stored_bytes"]
    systems = {
        "query_first": KVReuseReranker("smollm2", layout="query_first", max_batch=args.max_batch),
        "document_first_full": KVReuseReranker("smollm2", reuse=False, max_batch=args.max_batch),
        "document_first_reuse": raw,
        "document_first_reuse_int8": int8["int8"],
    }
    ql = KVReuseReranker("smollm2", directory=work / "kv", scoring="query_likelihood", **kw)
    ql_int8 = KVReuseReranker("smollm2", directory=work / "kv", scoring="query_likelihood",
                              codecs={"memory": "int8"}, **kw)
    ql.index(all_ids, doc_texts)
    ql_int8.index(all_ids, doc_texts)
    systems_ql = {"document_first_reuse_ql": ql, "document_first_reuse_int8_ql": ql_int8}
    rows = []

    # ------------------------------------------------------------ throughput
    throughput = {}
    for n in candidate_counts:
        per_repeat = {s: [] for s in [*systems, *systems_ql]}
        for rep in range(args.repeats):
            qs = queries[rep * args.throughput_queries:(rep + 1) * args.throughput_queries]
            for name, r in {**systems, **systems_ql}.items():  # interleaved: each repeat runs every system
                start = time.perf_counter()
                for q in qs:
                    ids, _ = cands(q, n)
                    r.score(q.text, ids, [texts[d] for d in ids])
                seconds = time.perf_counter() - start
                per_repeat[name].append(n * len(qs) / seconds)
                rows.append({"section": "throughput", "candidates": n, "repeat": rep, "system": name,
                             "candidates_per_s": n * len(qs) / seconds})
            print(f"  throughput n={n} repeat {rep + 1}/{args.repeats} done", flush=True)
        throughput[n] = {s: statistics.median(v) for s, v in per_repeat.items()}
    for r in (*systems.values(), *systems_ql.values()):
        assert r.stats().computed == 0 or r.reuse is False, "a reuse system computed a document: not pre-indexed"

    # -------------------------------------------------------------- fidelity
    single = KVReuseReranker("smollm2", reuse=False, max_batch=1)
    single_ql = KVReuseReranker("smollm2", reuse=False, max_batch=1, scoring="query_likelihood")
    full_ql = KVReuseReranker("smollm2", reuse=False, scoring="query_likelihood", max_batch=args.max_batch)
    fidelity = {}
    for scoring, reference, shape, reuse, codecs in (
            ("yes_no", systems["document_first_full"], single, raw, int8),
            ("query_likelihood", full_ql, single_ql, ql, None)):
        compared = {"shape (one at a time)": shape, "reuse": reuse}
        if codecs is not None:
            compared.update({f"reuse {g}": r for g, r in codecs.items()})
        else:
            compared["reuse int8"] = ql_int8
        got = {name: [] for name in compared}
        want = []
        for q in queries[:args.fidelity_queries]:
            ids, _ = cands(q, args.quality_candidates)
            docs = [texts[d] for d in ids]
            w = reference.score(q.text, ids, docs)
            want.append(w)
            for name, r in compared.items():
                got[name].append(r.score(q.text, ids, docs))
        fidelity[scoring] = {name: {**deviation(np.concatenate(v), np.concatenate(want)),
                                    "top5_overlap": float(np.mean([top5_overlap(a, b) for a, b in zip(v, want)])),
                                    "pairs": int(sum(len(a) for a in v))}
                             for name, v in got.items()}
        print(f"  fidelity ({scoring}) done", flush=True)

    # --------------------------------------------------------------- quality
    ranked = {"minilm_cosine": [], **{s: [] for s in systems if s != "document_first_full"},
              **{s: [] for s in systems_ql}}
    for q in queries[:args.quality_queries]:
        ids, cosine = cands(q, args.quality_candidates)
        docs = [texts[d] for d in ids]
        ranked["minilm_cosine"].append(ranks_of(cosine, ids, q.target))
        for name in ranked:
            if name != "minilm_cosine":
                r = systems.get(name) or systems_ql[name]
                ranked[name].append(ranks_of(r.score(q.text, ids, docs), ids, q.target))
    quality_rows = {name: quality(v) for name, v in ranked.items()}
    in_candidates = float(np.mean([np.isfinite(x) for x in ranked["minilm_cosine"]]))
    print("  quality done", flush=True)

    summary = {"throughput": {str(n): v for n, v in throughput.items()}, "index": index, "fidelity": fidelity,
               "quality": quality_rows, "target_in_candidates": in_candidates,
               "speedup_vs_query_first": {str(n): v["document_first_reuse"] / v["query_first"]
                                          for n, v in throughput.items()}}
    for n, v in throughput.items():
        B.print_table(f"candidates scored per second, {n} per query (median of {args.repeats} repeats)",
                      [{"system": s, "cps": c, "vs": c / v["query_first"]} for s, c in v.items()],
                      (("system", "system", "s"), ("candidates/s", "cps", ".1f"), ("vs query-first", "vs", ".2f")))
    for scoring, table in fidelity.items():
        B.print_table(f"score deviation vs document-first full prefill ({scoring})",
                      [{"what": k, **v} for k, v in table.items()],
                      (("compared", "what", "s"), ("max", "max", ".3f"), ("mean", "mean", ".3f"),
                       ("p90", "p90", ".3f"), ("top-5 overlap", "top5_overlap", ".2f"), ("pairs", "pairs", "d")))
    B.print_table(f"quality on {args.quality_queries} labelled queries, MiniLM top-{args.quality_candidates} "
                  f"(target among them for {in_candidates:.0%})",
                  [{"system": k, **v} for k, v in quality_rows.items()],
                  (("system", "system", "s"), ("MRR@10", "mrr_at_10", ".3f"), ("recall@3", "recall_at_3", ".3f")))
    print(f"index: {index['docs_per_s']:.1f} docs/s, {index['raw_bytes'] / 2**20:.2f} MiB raw per document, "
          f"int8 {index['stored_bytes_int8'] / index['raw_bytes']:.3f}x")
    path = B.write_json("bench_rerank", rows, vars(args), summary=summary, engine="transformers")
    print("wrote", path)


if __name__ == "__main__":
    main()
