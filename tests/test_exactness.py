"""Reused KV gives the answer recomputing gives, within the exactness policy.

A stream of queries over a small document pool (fresh paths, repeats,
extended prefixes, reorderings) is served with the KV of the longest cached
prefix (from the in-process PathKVStore of engine_fixtures, standing in for
the cache) and, for reference, from scratch in one forward without reuse.

The policy (what "the same output" means):
- float32: the first token's logits agree within 1e-5 (reuse changes only the
  summation order of GEMMs) and the greedy tokens are equal.
- bfloat16: CPU bf16 matmuls pick kernels by row count, so the same prompt
  prefilled in one forward or in one forward per segment gives different
  logits with no reuse at all. bench/bench_exactness.py measures that noise
  (results in bench/results/bench_exactness.json); reuse is held to it: every
  query's first-token logits within BF16_LOGIT_TOL of recomputing, and over a
  stream the 16 greedy tokens equal at least as often as the two no-reuse
  chunkings agree, less a sampling slack. A real error (wrong position, wrong
  document, stale KV) moves logits by several units and answers entirely.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from hyperrag.engines.base import PrefillRequest
from engine_fixtures import PathKVStore, short_corpus_texts, smollm2_engine, tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401

QUESTIONS = [
    "What is this document about?",
    "Summarize the first document in one sentence.",
    "Which place names appear in the documents?",
]
# Measured by bench/bench_exactness.py on SmolLM2-135M bf16 (80 prompts, see bench/README.md): two
# no-reuse prefills of the same prompt, one forward vs one per segment, differ by up to 0.84 in the
# first token's logits (which span about 30) and give the same 16 greedy tokens 76% of the time.
BF16_LOGIT_TOL = 1.0
BF16_CHUNKED_AGREEMENT = 0.76
BF16_RATE_SLACK = 0.1  # 56 queries: the rate's standard error is about 0.06
FLOAT32_LOGIT_TOL = 1e-5


def assert_within_policy(dtype, reused, fresh, where) -> float:
    """One answer against its no-reuse recompute (GenerateResults); returns the logit difference."""
    diff = float(np.abs(reused.prefill.logits - fresh.prefill.logits).max())
    if dtype == "float32":
        assert diff <= FLOAT32_LOGIT_TOL and reused.token_ids == fresh.token_ids, (where, diff)
    else:
        assert diff <= BF16_LOGIT_TOL, (where, diff)
    return diff


def query_stream(doc_ids, num_queries, k=3, seed=0):
    """Paths that mix fresh paths, repeats, extended prefixes and reorderings of earlier ones."""
    rng = random.Random(seed)
    seen = []
    out = []
    for i in range(num_queries):
        kind = i % 4 if seen else 0
        if kind == 0:
            path = rng.sample(doc_ids, k)
        elif kind == 1:
            path = list(rng.choice(seen))
        elif kind == 2:
            base = rng.choice(seen)
            keep = rng.randrange(1, k)
            path = base[:keep] + rng.sample([d for d in doc_ids if d not in base[:keep]], k - keep)
        else:
            unseen = [list(p) for base in seen for p in itertools.permutations(base) if list(p) not in seen]
            path = rng.choice(unseen)
        seen.append(path)
        out.append((path, QUESTIONS[rng.randrange(len(QUESTIONS))]))
    return out


def run_exactness(engine, texts: dict, num_queries: int, seed: int = 0):
    """Serve the stream with and without reuse; return per-query records, asserting as it goes."""
    store = PathKVStore()
    ns = engine.namespace()
    seen_sets, seen_paths, records = set(), set(), []
    for path, question in query_stream(sorted(texts), num_queries, seed=seed):
        prompt = engine.prompt(path, doc_texts=[texts[d] for d in path], question=question)
        cached = store.match(ns, prompt.segment_ids)
        reused = engine.generate(PrefillRequest(ns, prompt, cached), max_new_tokens=16)
        fresh = engine.generate(PrefillRequest(ns, prompt), max_new_tokens=16)
        diff = assert_within_policy(engine.dtype, reused, fresh, (path, len(cached)))
        assert [kv.doc_id for kv in reused.prefill.new_kv] == list(prompt.segment_ids[len(cached):])
        for kv in reused.prefill.new_kv:
            assert kv.nbytes == kv.payload.nbytes == engine.kv_bytes(kv.tokens)
        store.insert(ns, prompt.segment_ids, reused.prefill.new_kv)
        docs_hit = max(0, len(cached) - prompt.fixed)
        reordered = frozenset(path) in seen_sets and tuple(path) not in seen_paths
        seen_sets.add(frozenset(path))
        seen_paths.add(tuple(path))
        records.append({"path": tuple(path), "matched": docs_hit, "diff": diff, "reordered": reordered,
                        "same_tokens": reused.token_ids == fresh.token_ids,
                        "pattern": "full" if docs_hit == len(path) else "partial" if docs_hit else "miss"})
    return records


def check_mix(records, minimum=5):
    patterns = [r["pattern"] for r in records]
    for p in ("full", "partial", "miss"):
        assert patterns.count(p) >= minimum, (p, patterns.count(p))
    assert sum(r["reordered"] for r in records) >= minimum


def test_reuse_within_policy_tiny_float32(tiny_engine, tiny_texts):
    records = run_exactness(tiny_engine, tiny_texts, num_queries=60)
    check_mix(records)
    assert all(r["same_tokens"] for r in records)


@pytest.mark.slow
def test_reuse_within_policy_smollm2_bf16(smollm2_engine, short_corpus_texts):
    records = run_exactness(smollm2_engine, short_corpus_texts, num_queries=56, seed=1)
    check_mix(records)
    agreement = np.mean([r["same_tokens"] for r in records])
    assert agreement >= BF16_CHUNKED_AGREEMENT - BF16_RATE_SLACK, agreement
