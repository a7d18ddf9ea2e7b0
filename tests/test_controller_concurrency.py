"""One controller called from many threads at once: no error, no lock left, exact
accounting, and real-model answers equal to a single-thread run of the same queries."""
from __future__ import annotations

import dataclasses
import math
import random
import threading

import pytest

from hyperrag import RAGOptimize, RAGOptimizeConfig
from hyperrag import workloads as W
from hyperrag.cache import KVCache
from hyperrag.serve import PipelineTiming, Query, RAGServeController
from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401
from test_kv_cache import check_consistent


def run_threads(n, target):
    """Run target(i) in n threads; re-raise the first exception of any of them."""
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as e:  # collected and re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def assert_quiescent(ctrl):
    """Every lock released, tree invariants hold, pools agree with the tree."""
    tree = ctrl.cache.tree
    assert tree.check_invariants() == []
    assert all(tree.node(n).lock_count == 0 for n in tree.node_ids())
    check_consistent(ctrl.cache)


def test_eight_threads_of_mixed_simulated_queries():
    ctrl = RAGOptimize(RAGOptimizeConfig(paradigm="hyperscale", gpu_budget_gb=0.5, host_budget_gb=2.0)
                       ).build_controller(reorder=True, speculative=True)
    assert ctrl.speculative and ctrl.reorder and ctrl.timing.can_speculate
    threads, per_thread = 8, 500
    results = [[] for _ in range(threads)]

    def client(i):
        rng = random.Random(i)
        spec = W.paradigm_spec("hyperscale", num_queries=per_thread, num_docs=150, doc_tokens_mean=300,
                               qps=400.0, seed=i)
        queries = [dataclasses.replace(q, query_id=f"t{i}-{q.query_id}") for q in W.generate(spec)]
        k = 0
        while k < len(queries):
            shape = rng.random()
            if shape < 0.5:  # one query
                results[i].append(ctrl.process(dataclasses.replace(queries[k], arrival_s=0.0)))
                k += 1
            elif shape < 0.9:  # a batch with arrival offsets: reordering and speculation inside it
                batch = queries[k:k + rng.randint(2, 6)]
                t0 = batch[0].arrival_s
                results[i].extend(ctrl.process_batch([dataclasses.replace(q, arrival_s=q.arrival_s - t0)
                                                      for q in batch]))
                k += len(batch)
            elif shape < 0.95:  # a document re-sent with another length: a changed document
                q = queries[k]
                results[i].append(ctrl.process(dataclasses.replace(
                    q, arrival_s=0.0, doc_tokens=[t + 1 for t in q.doc_tokens])))
                k += 1
            else:
                ctrl.metrics()  # readers beside the writers

    run_threads(threads, client)
    served = [r for rs in results for r in rs]
    assert len(served) == threads * per_thread
    m = ctrl.metrics()
    assert m.queries == threads * per_thread
    assert all(math.isfinite(r.ttft_s) and r.ttft_s > 0 for r in served)
    assert all(math.isfinite(r.total_latency_s) and r.total_latency_s >= r.ttft_s for r in served)
    assert m.hits > 0 and m.speculations > 0 and m.speculations_kept > 0 and m.stale_nodes_removed > 0
    assert sum(m.evictions.values()) > 0  # the budgets were small enough to evict under contention
    assert_quiescent(ctrl)


def real_queries(engine, texts, n, seed):
    rng = random.Random(seed)
    ids = sorted(texts)
    out = []
    for j in range(n):
        path = rng.sample(ids[:8], rng.randint(1, 3))  # 8 documents: paths repeat and share prefixes
        out.append(Query(query_id=f"s{seed}-q{j}", text=f"Question {j % 5}: what do they say?", doc_ids=path,
                         doc_tokens=[engine.count_tokens(texts[d]) for d in path],
                         doc_texts=[texts[d] for d in path], output_tokens=6))
    return out


# Approximate reuse recomputing every re-positioned token answers like a full prefill, so
# both modes are held to the same single-thread answers.
REUSE = {"exact": {}, "approximate": dict(reuse="approximate", recompute_policy="first_k", recompute_budget=1.0)}


@pytest.mark.parametrize("reuse", sorted(REUSE))
def test_four_threads_on_a_real_model_answer_like_one(tiny_engine, tiny_texts, reuse):
    threads, per_thread = 4, 30
    queries = [real_queries(tiny_engine, tiny_texts, per_thread, seed) for seed in range(threads)]

    def controller(**options):
        kv = tiny_engine.kv_bytes(1)
        cache = KVCache({"gpu": 300 * kv, "host": 1200 * kv}, policy="lru", block_bytes=4096)
        return RAGServeController(tiny_engine, cache, PipelineTiming(), speculative=False, **options)

    alone = controller()
    expected = {q.query_id: alone.process(q).output_token_ids for qs in queries for q in qs}

    shared = controller(**REUSE[reuse])
    got = {}

    def client(i):
        for q in queries[i]:
            r = shared.process(q)
            assert math.isfinite(r.ttft_s) and r.ttft_s > 0
            got[q.query_id] = r.output_token_ids

    run_threads(threads, client)
    assert got == expected  # the same greedy tokens, whatever the interleaving
    m = shared.metrics()
    assert m.queries == threads * per_thread and m.hits > 0
    assert sum(m.evictions.values()) > 0  # small tiers: reuse under eviction, across threads
    assert_quiescent(shared)


def test_metrics_window_keeps_memory_constant():
    from hyperrag.serve import metrics as M
    from hyperrag.serve.query import QueryResult

    rec = M.MetricsRecorder()
    for i in range(M.LATENCY_WINDOW + 10):
        rec.add_result(QueryResult(query_id=str(i), ttft_s=1.0 if i < 10 else 2.0, total_latency_s=3.0,
                                   cached_tokens=0, computed_tokens=1))
    snap = rec.snapshot(None)
    assert snap.queries == M.LATENCY_WINDOW + 10
    assert snap.p50_ttft_s == snap.p90_ttft_s == 2.0  # the oldest ten left the window
    assert snap.mean_ttft_s == pytest.approx((10 * 1.0 + M.LATENCY_WINDOW * 2.0) / (M.LATENCY_WINDOW + 10))
