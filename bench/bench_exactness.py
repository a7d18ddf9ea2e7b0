"""How close reused KV stays to recomputing it, next to how close recomputing stays to itself.

bf16 matmuls on this CPU pick kernels by the number of rows, so the same
prompt prefilled in one forward or in one forward per segment ("chunked")
gives slightly different logits: that is the model's own noise, with no
reuse at all. Reuse computes a segment's KV in an earlier forward of another
shape, so it can differ by the same kind of noise. For each prompt this
measures, against a single-forward prefill without reuse:

  chunked   the same prompt, one forward per segment, no reuse
  reuse     the longest cached prefix from earlier prompts of the stream
            (partial and full hits, reordered document sets), the rest in one
            forward: what the controller does

and reports how often the 16 greedy tokens are equal, how often the first
token is, and the max |logit difference| of the first token. The tolerance
the exactness tests hold reuse to comes from the "chunked" rows.

    python bench/bench_exactness.py [--queries 80] [--dtype bfloat16]
Writes bench/results/bench_exactness.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from hyperrag.data import load_corpus
from hyperrag.engines.base import PrefillRequest
from hyperrag.engines.transformers_engine import TransformersEngine
from hyperrag.serve import bench as B

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from engine_fixtures import PathKVStore  # noqa: E402
from test_exactness import query_stream  # noqa: E402

TOKENS = 16


def compare(a, b) -> dict:
    return {"same_tokens": a.token_ids == b.token_ids, "same_first": a.token_ids[0] == b.token_ids[0],
            "max_logit_diff": float(np.abs(a.prefill.logits - b.prefill.logits).max())}


def summarize(rows, kind):
    sel = [r[kind] for r in rows if r.get(kind)]
    diffs = np.array([x["max_logit_diff"] for x in sel])
    return {"prompts": len(sel), "same_tokens_rate": float(np.mean([x["same_tokens"] for x in sel])),
            "same_first_rate": float(np.mean([x["same_first"] for x in sel])),
            "max_logit_diff_median": float(np.median(diffs)), "max_logit_diff_p90": float(np.percentile(diffs, 90)),
            "max_logit_diff_max": float(diffs.max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=80)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--docs", type=int, default=12, help="the shortest N corpus documents form the pool")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = TransformersEngine(args.model, dtype=args.dtype)
    docs = sorted(load_corpus(), key=lambda d: len(d.text))[: args.docs]
    texts = {d.doc_id: d.text for d in docs}
    store, ns, rows = PathKVStore(), engine.namespace(), []
    for i, (path, question) in enumerate(query_stream(sorted(texts), args.queries, seed=args.seed)):
        prompt = engine.prompt(path, doc_texts=[texts[d] for d in path], question=question)
        fresh = engine.generate(PrefillRequest(ns, prompt), TOKENS)
        chunked = engine.generate(PrefillRequest(ns, prompt), TOKENS, chunked=True)
        cached = store.match(ns, prompt.segment_ids)
        row = {"path": path, "cached_segments": len(cached), "segments": len(prompt.segment_ids),
               "chunked": compare(chunked, fresh)}
        if len(cached) > 1:  # more than the system prompt: a document's KV from another forward
            reused = engine.generate(PrefillRequest(ns, prompt, cached), TOKENS)
            row["reuse"] = compare(reused, fresh)
            store.insert(ns, prompt.segment_ids, reused.prefill.new_kv)
        else:
            store.insert(ns, prompt.segment_ids, fresh.prefill.new_kv)
        rows.append(row)
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{args.queries}", flush=True)
    summary = {"chunked_vs_single": summarize(rows, "chunked"), "reuse_vs_single": summarize(rows, "reuse")}
    B.print_table(f"{args.model} {args.dtype}: vs a single-forward prefill without reuse ({args.queries} prompts, "
                  f"{TOKENS} greedy tokens)",
                  [{"kind": k, **v} for k, v in summary.items()], COLUMNS)
    path = B.write_json("bench_exactness", rows, vars(args), summary=summary, engine="transformers")
    print("wrote", path)


COLUMNS = (("compared", "kind", "s"), ("prompts", "prompts", "d"), ("16 tokens equal", "same_tokens_rate", ".1%"),
           ("first token equal", "same_first_rate", ".1%"), ("max |dlogit| median", "max_logit_diff_median", ".3f"),
           ("p90", "max_logit_diff_p90", ".3f"), ("max", "max_logit_diff_max", ".3f"))

if __name__ == "__main__":
    main()
