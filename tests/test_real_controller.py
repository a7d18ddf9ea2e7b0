"""The transformers engine served through RAGServeController and the native KVCache.

The controller matches each query's path in the KVCache (real KV bytes in
block pools), hands the hits' payloads to the engine, prefills the rest and
stores each new document's KV as its own node. These tests check that the
answer equals a prefill from scratch, that the cache respects its budgets
while evicting, and that a failing prefill leaves the tree as it was.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from hyperrag import RAGOptimize, RAGOptimizeConfig
from hyperrag.cache import document_id
from hyperrag.engines.base import PrefillRequest
from hyperrag.serve.query import Query
from engine_fixtures import short_corpus_texts, tiny_model_dir, tiny_texts  # noqa: F401
from test_exactness import assert_within_policy, query_stream

OUTPUT_TOKENS = 16


def build(model_path, dtype="float32", **kwargs):
    return RAGOptimize(RAGOptimizeConfig()).build_controller(
        engine="transformers", model_path=str(model_path), engine_kwargs={"dtype": dtype},
        default_output_tokens=OUTPUT_TOKENS, **kwargs)


def make_query(engine, texts, path, question, qid):
    return Query(query_id=qid, text=question, doc_ids=list(path),
                 doc_tokens=[engine.count_tokens(texts[d]) for d in path], doc_texts=[texts[d] for d in path])


def spy_generate(engine):
    """Record every GenerateResult the controller gets from the engine."""
    seen = []
    real = engine.generate

    def generate(request, max_new_tokens=16, **kw):
        out = real(request, max_new_tokens, **kw)
        seen.append(out)
        return out

    engine.generate = generate
    return seen


def fresh(engine, q: Query, tokens=OUTPUT_TOKENS, order=None):
    """The same prompt (documents in ``order``, default the query's) prefilled with no cached KV."""
    ids = list(order or q.doc_ids)
    texts = dict(zip(q.doc_ids, q.doc_texts))
    prompt = engine.prompt(ids, doc_texts=[texts[d] for d in ids], question=q.text)
    return engine.generate(PrefillRequest(namespace=engine.namespace(), prompt=prompt), tokens)


def serve_and_compare(controller, texts, num_queries, seed):
    """Serve a mixed stream; each answer must match the no-reuse one within the exactness policy."""
    engine = controller.engine
    seen = spy_generate(engine)
    results = []
    for i, (path, question) in enumerate(query_stream(sorted(texts), num_queries, seed=seed)):
        q = make_query(engine, texts, path, question, f"q{i}")
        r = controller.process(q)
        got = seen[-1]
        ref = fresh(engine, q, order=r.doc_order)
        assert_within_policy(engine.dtype, got, ref, (path, r.matched_docs))
        assert r.output_token_ids == got.token_ids
        assert r.ttft_s >= r.prefill_s > 0 and r.ttft_s == pytest.approx(r.queue_s + r.load_s + r.prefill_s)
        results.append((path, r))
    return results


def pattern_counts(results):
    full = sum(r.matched_docs == len(p) for p, r in results)
    partial = sum(0 < r.matched_docs < len(p) for p, r in results)
    miss = sum(r.matched_docs == 0 for p, r in results)
    return full, partial, miss


def test_exact_through_controller(tiny_model_dir, tiny_texts):
    c = build(tiny_model_dir, gpu_bytes=64 << 20, host_bytes=64 << 20)
    results = serve_and_compare(c, tiny_texts, num_queries=24, seed=0)
    full, partial, miss = pattern_counts(results)
    assert full >= 3 and partial >= 3 and miss >= 3, (full, partial, miss)
    # Reordered document sets are misses at their first position but still exact (checked above).
    sets = [frozenset(p) for p, _ in results]
    assert any(sets[i] in sets[:i] and results[i][0] not in [p for p, _ in results[:i]] for i in range(len(sets)))
    # Node sizes follow the engine's model, not the planner's preset model of the config.
    engine, tree = c.engine, c.cache.tree
    assert c.config.model.kv_bytes_per_token(c.config.dtype_bytes) != engine.kv_bytes(1)
    for nid in tree.node_ids():
        info = tree.node(nid)
        assert info.nbytes == engine.kv_bytes(info.tokens) == c.cache.get(nid).nbytes
    m = c.metrics()
    assert m.queries == 24 and m.hits == 23 and m.evictions.get("gpu", 0) == 0  # the system prompt hits from the 2nd


def test_budget_evictions_stay_exact(tiny_model_dir, tiny_texts):
    engine_bytes_per_token = 2 * 2 * 1 * 64 * 4  # layers x (k, v) x kv heads x head dim x float32
    gpu, host, block = 1 << 20, 2 << 20, 4096
    c = build(tiny_model_dir, gpu_bytes=gpu, host_bytes=host, block_bytes=block)
    assert c.engine.kv_bytes(1) == engine_bytes_per_token
    engine = c.engine
    seen = spy_generate(engine)
    host_hits = 0
    for i, (path, question) in enumerate(query_stream(sorted(tiny_texts), 30, seed=3)):
        q = make_query(engine, tiny_texts, path, question, f"b{i}")
        r = c.process(q)
        assert_within_policy(engine.dtype, seen[-1], fresh(engine, q), path)
        host_hits += r.tier_hits.get("host", 0)
        s, st = c.cache.stats(), c.cache.storage_stats()
        for tier, cap in (("gpu", gpu), ("host", host)):
            used = dict(s.used_bytes)[tier]
            assert used <= cap
            resident = [n for n in c.cache.tree.node_ids() if tier in c.cache.tree.node(n).resident_tiers]
            # Pool bytes: the payloads resident in the tier, each rounded up to whole blocks.
            assert st[tier]["bytes_used"] == sum(-(-c.cache.tree.node(n).nbytes // block) * block for n in resident)
            assert st[tier]["bytes_used"] <= cap + len(resident) * block
        assert c.cache.tree.check_invariants() == []
    ev = c.metrics().evictions
    assert ev["gpu"] > 0 and ev["host"] > 0, ev  # demotions to host and drops from host both happened
    assert host_hits > 0  # some hits were served from the host tier (promoted back)


def tree_snapshot(c):
    tree = c.cache.tree
    ids = sorted(tree.node_ids())
    return ids, {n: (tree.node(n).lock_count, tree.node(n).nbytes) for n in ids}


def test_failed_prefill_leaves_tree_unchanged(tiny_model_dir, tiny_texts):
    c = build(tiny_model_dir, gpu_bytes=16 << 20, host_bytes=16 << 20)
    engine = c.engine
    docs = sorted(tiny_texts)
    c.process(make_query(engine, tiny_texts, docs[:1], "What?", "warm"))
    before = tree_snapshot(c)

    # 1. The engine fails half-way: the first new document's KV is extracted, the second raises.
    real_extract, calls = engine._extract, []

    def failing_extract(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real_extract(*args)

    engine._extract = failing_extract
    q = make_query(engine, tiny_texts, docs[:3], "What?", "fails")
    with pytest.raises(RuntimeError, match="injected"):
        c.process(q)
    assert len(calls) == 2  # it did fail after matching (and locking) docs[0]
    assert tree_snapshot(c) == before and all(lock == 0 for lock, _ in before[1].values())
    assert c.cache.tree.check_invariants() == []
    del engine._extract
    r = c.process(Query(**{**q.__dict__, "query_id": "retry"}))
    assert r.matched_docs == 1 and r.stored_docs == 2
    assert r.output_token_ids == fresh(engine, q).token_ids  # float32: within the policy's 1e-5

    # 2. The whole prompt exceeds the context window (each document alone fits): refused in prefill.
    before = tree_snapshot(c)
    engine.max_positions = sum(engine.count_tokens(tiny_texts[d]) for d in docs[3:6]) - 5
    with pytest.raises(ValueError, match="exceeds the model's context window"):
        c.process(make_query(engine, tiny_texts, [docs[0]] + docs[3:6], "What?", "too-long"))
    assert tree_snapshot(c) == before
    assert c.cache.tree.check_invariants() == []


def test_bad_documents_rejected_before_the_cache(tiny_model_dir, tiny_texts):
    c = build(tiny_model_dir, gpu_bytes=16 << 20, host_bytes=16 << 20)
    engine = c.engine
    d = sorted(tiny_texts)[:2]
    q = make_query(engine, tiny_texts, d, "What?", "bad")
    lookups = c.cache.stats().lookups
    with pytest.raises(ValueError, match=rf"query 'bad': doc_tokens\[1\]=\d+ but document '{d[1]}' has"):
        c.process(Query(**{**q.__dict__, "doc_tokens": [q.doc_tokens[0], q.doc_tokens[1] + 1]}))
    with pytest.raises(ValueError, match="doc_texts or doc_token_ids is required"):
        c.process(Query(**{**q.__dict__, "doc_texts": None}))
    engine.max_context = max(q.doc_tokens)
    with pytest.raises(ValueError, match=f"query 'bad': .*exceed the model's context window of {max(q.doc_tokens)}"):
        c.process(q)
    assert c.cache.stats().lookups == lookups and c.cache.tree.node_ids() == []


def test_model_path_errors(tmp_path):
    with pytest.raises(ValueError, match="needs model_path="):
        RAGOptimize(RAGOptimizeConfig()).build_controller(engine="transformers")
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        build(missing)


@pytest.mark.slow
def test_smollm2_exact_through_controller(short_corpus_texts):
    texts = dict(sorted(short_corpus_texts.items())[:6])
    c = build("smollm2", dtype="bfloat16", gpu_bytes=256 << 20, host_bytes=256 << 20)
    results = serve_and_compare(c, texts, num_queries=8, seed=1)
    full, partial, miss = pattern_counts(results)
    assert full >= 1 and partial >= 1 and miss >= 1, (full, partial, miss)


class Stage:
    def __init__(self, doc_ids, final=False, delay=0.0):
        self.doc_ids, self.final, self.delay = doc_ids, final, delay


def staged(stages, log):
    """Yield search stages like FaissRetriever.search_staged, recording which prefills ran meanwhile."""
    for s in stages:
        time.sleep(s.delay)
        log.append(("stage", list(s.doc_ids)))
        yield s


def test_staged_speculation_kept_and_discarded(tiny_model_dir, tiny_texts):
    c = build(tiny_model_dir, gpu_bytes=16 << 20, host_bytes=16 << 20)
    engine = c.engine
    d = sorted(tiny_texts)
    log = []
    real_prefill = engine.prefill
    real_generate = engine.generate
    engine.prefill = lambda request, **kw: (log.append(("prefill", list(request.prompt.doc_ids))),
                                            real_prefill(request, **kw))[1]
    engine.generate = lambda request, *a, **kw: (log.append(("generate", list(request.prompt.doc_ids))),
                                                 real_generate(request, *a, **kw))[1]

    # Interim top-k agrees with the final one: its prefill (started before the last stage) is used.
    r = c.process_staged("kept", "What?", staged([Stage(d[:3]), Stage(d[:3], final=True, delay=0.2)], log), tiny_texts)
    assert log[:2] == [("stage", d[:3]), ("generate", d[:3])] and len(log) == 3  # prefill before the final stage
    assert r.speculative and r.speculation_kept and r.stored_docs == 3 and r.retrieval_s >= 0.2
    q = make_query(engine, tiny_texts, d[:3], "What?", "ref")
    assert r.output_token_ids == fresh(engine, q).token_ids  # decoded by the speculation
    assert r.ttft_s >= r.retrieval_s
    nodes = set(c.cache.tree.node_ids())

    # The final top-k differs: the interim prefill is discarded and stores nothing.
    log.clear()
    interim, final = [d[0], d[4], d[5]], [d[0], d[6], d[7]]
    r = c.process_staged("discarded", "Why?", staged([Stage(interim), Stage(final, final=True)], log), tiny_texts,
                         output_tokens=1)  # the final prefill goes through engine.prefill (logged)
    assert r.speculative and not r.speculation_kept and r.wasted_prefill_s > 0
    assert ("prefill", interim) in log[:-1] and log[-1] == ("prefill", final)  # the final one after it
    stored = {document_id(c.cache.tree.node(n).doc_id) for n in set(c.cache.tree.node_ids()) - nodes}
    assert stored == {d[6], d[7]}  # nothing of the discarded path (d[4], d[5])
    assert r.matched_docs == 1 and r.stored_docs == 2
    assert r.output_token_ids == fresh(engine, make_query(engine, tiny_texts, final, "Why?", "ref2"), tokens=1).token_ids
    assert all(c.cache.tree.node(n).lock_count == 0 for n in c.cache.tree.node_ids())
    m = c.metrics()
    assert m.speculations == 2 and m.speculations_kept == 1


def test_cancelled_prefill_stops_and_returns_nothing(tiny_model_dir, tiny_texts):
    from hyperrag.engines.base import PrefillCancelled

    c = build(tiny_model_dir, gpu_bytes=16 << 20, host_bytes=16 << 20)
    engine, d = c.engine, sorted(tiny_texts)[:3]
    forwards = []
    engine.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    prompt = engine.prompt(d, doc_texts=[tiny_texts[x] for x in d], question="What?")
    request = PrefillRequest(namespace=engine.namespace(), prompt=prompt, cancelled=lambda: len(forwards) >= 2)
    with pytest.raises(PrefillCancelled):
        engine.generate(request, 16, chunked=True)
    assert len(forwards) == 2  # system prompt + the first document; stopped before the second


def test_eviction_costs_follow_the_engine_not_the_planner_preset(tiny_model_dir, tiny_texts):
    """PGDSF priorities come from the model the engine runs: the config's preset
    (here a 70B and a 1B model) must not change them."""
    priorities = []
    for preset in ("llama-3.1-70b", "llama-3.2-1b"):
        controller = RAGOptimize(RAGOptimizeConfig(model=preset)).build_controller(
            engine="transformers", model_path=str(tiny_model_dir), engine_kwargs={"dtype": "float32"},
            default_output_tokens=1)
        engine = controller.engine
        ids = sorted(tiny_texts)[:3]
        controller.process(make_query(engine, tiny_texts, ids, "Which document is first?", "q-cost"))
        tree = controller.cache.tree
        priorities.append(sorted(tree.node(n).priority for n in tree.node_ids()))
    assert len(priorities[0]) == 4 and all(p > 0 for p in priorities[0])  # the system prompt and 3 documents
    assert priorities[0] == priorities[1]
