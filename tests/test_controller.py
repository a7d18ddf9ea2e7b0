"""RAGServeController on the real cache with the simulated engine."""
import dataclasses

import pytest

from hyperrag import workloads as W
from hyperrag.engines.base import PrefillResult
from hyperrag.engines.simulated import SimulatedEngine
from hyperrag.serve.controller import RAGServeController
from hyperrag.serve.pipeline import PipelineTiming
from hyperrag.serve.query import Query

cache_mod = pytest.importorskip("hyperrag.cache", reason="needs the native cache module")
KVB = 1024  # KV bytes per token of the test model
MIB = 1 << 20


class LinearCost:
    """A transparent stand-in for LLMCostModel: 0.1 ms per new token plus attention over the cache."""

    def prefill_seconds(self, new_tokens, cached_tokens=0, batch=1):
        return 1e-4 * new_tokens + 2e-8 * new_tokens * cached_tokens if new_tokens else 0.0

    def decode_seconds(self, context_tokens, new_tokens, batch=1):
        return 5e-3 * new_tokens


def make_profile():
    cost = LinearCost()
    cached, new = [0, 1000, 10000, 100000], [1, 100, 1000, 10000, 100000]
    return cache_mod.CostProfile(cached, new, [[cost.prefill_seconds(n, c) for n in new] for c in cached])


def make_cache(gpu=64 * MIB, host=256 * MIB, policy="pgdsf"):
    caps = {"gpu": gpu, "host": host} if host else {"gpu": gpu}
    return cache_mod.KVCache(capacities=caps, policy=policy, profile=make_profile(), block_bytes=4096,
                             storage_scale=16)


def make_ctrl(cache="default", timing=None, **kw):
    engine = SimulatedEngine(LinearCost(), KVB, model_name="test", question_tokens=16)
    cache = make_cache() if cache == "default" else cache
    timing = timing or PipelineTiming(retrieval_s=0.02, retrieval_stages=4, agreement=0.7,
                                      kv_load_seconds=lambda b: b / 10e9)
    return RAGServeController(engine, cache, timing, **kw)


def stats_dict(cache):
    s = cache.stats()
    return {f: (dict(getattr(s, f)) if isinstance(getattr(s, f), dict) or hasattr(getattr(s, f), "items")
                else getattr(s, f))
            for f in ("num_nodes", "used_bytes", "lookups", "hits", "hit_tokens", "lookup_tokens", "evictions")}


def trace(n=200, qps=40.0, seed=0, paradigm="hyperscale", **kw):
    kw.setdefault("num_docs", 300)
    kw.setdefault("doc_tokens_mean", 400)
    return W.generate(W.paradigm_spec(paradigm, num_queries=n, qps=qps, seed=seed, **kw))


def test_repeat_query_reuses_the_document_prefix_exactly():
    ctrl = make_ctrl()
    q = lambda i, ids, toks: Query(f"q{i}", "what?", ids, toks)
    first = ctrl.process(q(1, ["d1", "d2"], [512, 256]))
    assert not first.cache_hit and first.cached_tokens == 0 and first.stored_docs == 2
    again = ctrl.process(q(2, ["d1", "d2"], [512, 256]))
    assert again.cache_hit and again.cached_tokens == 768 and again.tier_hits == {"gpu": 2}
    assert again.computed_tokens == 16 and again.prefill_s < first.prefill_s
    # Order matters: [d2, d1] is another path; [d1, d3] reuses d1 only.
    swapped = ctrl.process(q(3, ["d2", "d1"], [256, 512]))
    assert not swapped.cache_hit
    partial = ctrl.process(q(4, ["d1", "d3"], [512, 100]))
    assert partial.cached_tokens == 512 and partial.matched_docs == 1


def test_metrics_agree_with_the_tree():
    ctrl = make_ctrl(make_cache(gpu=16 * MIB, host=64 * MIB))
    ctrl.process_batch(trace())
    m, s = ctrl.metrics(), ctrl.cache.stats()
    assert m.queries == 200
    assert m.lookups == s.lookups and m.hits == s.hits and s.lookups >= 200
    assert m.hit_rate == pytest.approx(s.hits / s.lookups)
    assert m.token_hit_rate == pytest.approx(s.hit_tokens / s.lookup_tokens)
    assert m.gpu_used_mib == pytest.approx(dict(s.used_bytes)["gpu"] / MIB)
    assert m.host_used_mib == pytest.approx(dict(s.used_bytes)["host"] / MIB)
    assert 0 < m.gpu_used_mib <= 16 and m.host_used_mib <= 64
    assert sum(dict(s.evictions).values()) > 0  # the budget was tight enough to evict
    assert 0 < m.hit_rate < 1


class EvictionAuditor:
    """Wraps a KVCache: tracks lock counts and fails if an eviction hits a locked node."""

    def __init__(self, cache):
        self.cache, self.locks, self.evicted, self.max_locked = cache, {}, 0, 0

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def lock(self, ids):
        self.cache.lock(ids)
        self._locked(ids)

    def _locked(self, ids):
        for i in ids:
            self.locks[i] = self.locks.get(i, 0) + 1
        self.max_locked = max(self.max_locked, sum(1 for v in self.locks.values() if v))

    def match(self, *a, lock=False, **kw):
        m = self.cache.match(*a, lock=lock, **kw)
        if lock:
            self._locked(m.node_ids)
        return m

    def unlock(self, ids):
        self.cache.unlock(ids)
        for i in ids:
            self.locks[i] -= 1

    def _audit(self, evictions):
        for ev in evictions:
            assert self.locks.get(ev.node_id, 0) == 0, f"locked node {ev.node_id} evicted"
            self.evicted += 1
        return evictions

    def put(self, *a, lock=False, **kw):
        r = self.cache.put(*a, lock=lock, **kw)
        self._audit(r.evictions)
        if lock:
            self._locked(r.node_ids)
        return r

    def promote(self, *a, **kw):
        return self._audit(self.cache.promote(*a, **kw))


class PromotionRecorder(EvictionAuditor):
    """Checks every put: the whole path ends in the put's tier or faster, and the nodes
    its insert promoted sit in that tier with their bytes."""

    def __init__(self, cache):
        super().__init__(cache)
        self.promoting_puts, self.put_tiers = 0, set()

    def put(self, *a, tier="gpu", **kw):
        r = super().put(*a, tier=tier, **kw)
        order = ("gpu", "host", "remote")
        for nid in r.node_ids:
            assert order.index(self.cache.node(nid).tier) <= order.index(tier)
        for nid in r.promoted:
            assert self.cache.node(nid).tier == tier
            assert set(self.cache._blocks[nid]) == set(self.cache.node(nid).resident_tiers)
        self.promoting_puts += bool(len(r.promoted))
        self.put_tiers.add(tier)
        return r


def test_store_below_a_prefix_demoted_since_the_match_promotes_it():
    # Under load, part of a job's path can be inserted by another job and demoted
    # before this job stores its new documents: the store promotes that prefix back
    # (before, the tree refused the insert and the controller had to retry).
    rec = PromotionRecorder(make_cache(gpu=16 * MIB, host=64 * MIB))
    ctrl = make_ctrl(rec)
    ctrl.process_batch(trace())
    assert rec.promoting_puts > 0
    assert rec.put_tiers == {"gpu"}  # no store had to fall back to a slower tier
    assert ctrl.cache.tree.check_invariants() == []


def test_locked_nodes_are_never_evicted_during_a_query():
    audit = EvictionAuditor(make_cache(gpu=4 * MIB, host=8 * MIB))
    # High load: many queries wait (holding locks) while others insert and evict.
    ctrl = make_ctrl(audit)
    ctrl.process_batch(trace(n=300, qps=200.0))
    assert audit.evicted > 50 and audit.max_locked > 2
    assert all(v == 0 for v in audit.locks.values())  # every lock released
    for nid in audit.locks:
        try:
            assert audit.cache.node(nid).lock_count == 0
        except KeyError:
            pass  # dropped from the last tier after it was unlocked


def test_results_are_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        ctrl = make_ctrl(make_cache(gpu=8 * MIB, host=32 * MIB))
        res = ctrl.process_batch(trace(n=150, seed=5, paradigm="iterative"))
        runs.append(([dataclasses.asdict(r) for r in res], ctrl.metrics().as_dict()))
    assert runs[0] == runs[1]
    other = make_ctrl(make_cache(gpu=8 * MIB, host=32 * MIB)).process_batch(trace(n=150, seed=6, paradigm="iterative"))
    assert [r.ttft_s for r in other] != [r["ttft_s"] for r in runs[0][0]]


BAD = [
    (dict(doc_ids=["a", "b"], doc_tokens=[10]), "len\\(doc_ids\\)"),
    (dict(doc_ids=[], doc_tokens=[]), "doc_ids is empty"),
    (dict(doc_ids=["a"], doc_tokens=[0]), "doc_tokens must be positive"),
    (dict(doc_ids=["a"], doc_tokens=[-5]), "doc_tokens must be positive"),
    (dict(doc_ids=["a", ""], doc_tokens=[1, 2]), "doc_ids must be non-empty"),
    (dict(doc_ids=["a", "a"], doc_tokens=[1, 2]), "duplicates"),
    (dict(doc_ids=["a"], doc_tokens=[1.5]), "doc_tokens must be positive"),
]


@pytest.mark.parametrize("fields, message", BAD)
def test_bad_queries_raise_clear_errors_without_touching_the_cache(fields, message):
    ctrl = make_ctrl()
    ctrl.process_batch(trace(n=20))
    before = stats_dict(ctrl.cache)
    good = Query("ok", "fine", ["x"], [10])
    with pytest.raises(ValueError, match=message):
        ctrl.process_batch([good, Query(query_id="bad", text="?", **fields)])
    assert stats_dict(ctrl.cache) == before
    assert ctrl.metrics().queries == 20


def test_duplicate_query_ids_in_a_batch_are_rejected_before_any_work():
    ctrl = make_ctrl()
    before = stats_dict(ctrl.cache)
    with pytest.raises(ValueError, match="duplicate query_id 'q'"):
        ctrl.process_batch([Query("q", "a", ["x"], [10]), Query("q", "b", ["y"], [10])])
    assert stats_dict(ctrl.cache) == before


class FailingEngine(SimulatedEngine):
    def __init__(self, fail_on):
        super().__init__(LinearCost(), KVB, model_name="test", question_tokens=16)
        self.fail_on = fail_on

    def prefill(self, request):
        if self.fail_on in request.prompt.segment_ids:
            raise RuntimeError("engine failure")
        return super().prefill(request)


def test_failed_prefill_unlocks_and_inserts_nothing():
    cache = make_cache()
    ctrl = RAGServeController(FailingEngine("boom"), cache, PipelineTiming(), speculative=False)
    ctrl.process(Query("warm", "?", ["d1", "d2"], [100, 100]))
    before = stats_dict(cache)
    with pytest.raises(RuntimeError, match="engine failure"):
        # d1, d2 are hits (locked while the engine runs); boom fails the prefill.
        ctrl.process(Query("bad", "?", ["d1", "d2", "boom"], [100, 100, 50]))
    after = stats_dict(cache)
    assert after["num_nodes"] == before["num_nodes"] and after["used_bytes"] == before["used_bytes"]
    m = cache.match(ctrl.engine.namespace(""), ["d1", "d2"])
    for nid in m.node_ids:
        assert cache.node(nid).lock_count == 0
    # The controller still serves (and reuses) after the failure.
    assert ctrl.process(Query("next", "?", ["d1", "d2"], [100, 100])).cached_tokens == 200


def test_a_document_resent_with_another_length_is_a_changed_document():
    # The simulated engine has no text: a document's length is the content it knows.
    ctrl = make_ctrl()
    ctrl.process(Query("a", "?", ["d1", "d2"], [100, 50]))
    r = ctrl.process(Query("b", "?", ["d1", "d2"], [120, 50]))
    assert not r.cache_hit and r.stored_docs == 2  # nothing of the old d1 (nor d2 below it) is reused
    keys = {ctrl.cache.node(n).doc_id for n in ctrl.cache.tree.node_ids()}
    assert keys == {"d1#n120", "d2#n50"}  # the old d1 and its subtree are gone
    assert ctrl.metrics().stale_nodes_removed == 1
    assert ctrl.process(Query("c", "?", ["d1"], [120])).cached_tokens == 120
    assert ctrl.cache.tree.check_invariants() == []


def _reorder_batch():
    # Both arrive while a long prefill runs; the cached one is cheap to serve.
    return [
        Query("long", "?", ["L"], [20000], arrival_s=0.0),
        Query("cold", "?", ["c1", "c2"], [3000, 3000], arrival_s=0.01),
        Query("warm", "?", ["w1", "w2"], [3000, 3000], arrival_s=0.02),
    ]


@pytest.mark.parametrize("reorder, window, first", [(True, 10.0, "warm"), (False, 10.0, "cold"),
                                                    (True, 0.0, "cold")])
def test_cache_aware_reordering_and_starvation_window(reorder, window, first):
    ctrl = make_ctrl(timing=PipelineTiming(), reorder=reorder, starvation_window_s=window, speculative=False)
    ctrl.process(Query("prime", "?", ["w1", "w2"], [3000, 3000]))
    res = {r.query_id: r for r in ctrl.process_batch(_reorder_batch())}
    served_first = min(("cold", "warm"), key=lambda k: res[k].ttft_s + _arrival(k))
    assert served_first == first
    assert res["warm"].cached_tokens == 6000


def _arrival(qid):
    return {q.query_id: q.arrival_s for q in _reorder_batch()}[qid]


def test_speculation_kept_when_interim_agrees_and_cuts_ttft():
    timing = dict(retrieval_s=0.2, retrieval_stages=4, kv_load_seconds=lambda b: 0.0)
    q = [Query(f"q{i}", "?", [f"a{i}", f"b{i}"], [2000, 2000], arrival_s=i * 2.0) for i in range(5)]
    on = make_ctrl(timing=PipelineTiming(agreement=1.0, **timing)).process_batch(q)
    off = make_ctrl(timing=PipelineTiming(agreement=1.0, **timing), speculative=False).process_batch(q)
    assert all(r.speculative and r.speculation_kept for r in on)
    assert not any(r.speculative for r in off)
    for a, b in zip(on, off):
        # Prefill (0.4 s) starts after the first of 4 stages instead of after all of them.
        assert a.ttft_s == pytest.approx(b.ttft_s - 0.15, abs=1e-6)
        assert a.cached_tokens == b.cached_tokens


def test_discarded_speculation_costs_its_compute_and_stores_nothing():
    timing = PipelineTiming(retrieval_s=0.2, retrieval_stages=4, agreement=0.0, kv_load_seconds=lambda b: 0.0)
    ctrl = make_ctrl(timing=timing)
    r = ctrl.process(Query("q", "?", ["a", "b"], [2000, 2000]))
    assert r.speculative and not r.speculation_kept
    assert r.wasted_prefill_s > 0 and ctrl.metrics().wasted_prefill_s == pytest.approx(r.wasted_prefill_s)
    # Only the final top-k was stored: interim documents never enter the tree.
    assert ctrl.cache.stats().num_nodes == 2 and r.stored_docs == 2
    base = make_ctrl(timing=timing, speculative=False).process(Query("q", "?", ["a", "b"], [2000, 2000]))
    # Each of the three stale speculations is stopped when the next stage (0.05 s) disagrees,
    # so they cost 0.15 s of engine time and the final prefill starts when retrieval ends.
    assert r.wasted_prefill_s == pytest.approx(0.15)
    assert r.ttft_s == pytest.approx(base.ttft_s)


def test_speculation_pool_bounds_outstanding_speculations():
    # Six searches at once; only two speculations may be unresolved at a time.
    timing = PipelineTiming(retrieval_s=0.2, retrieval_stages=4, agreement=1.0, retrieval_workers=6,
                            kv_load_seconds=lambda b: 0.0)
    burst = [Query(f"q{i}", "?", [f"a{i}"], [1000], arrival_s=0.0) for i in range(6)]
    res = make_ctrl(timing=timing, speculative_pool=2).process_batch(burst)
    assert sum(r.speculative for r in res) == 2


def test_host_hits_are_promoted_and_pay_the_load():
    ctrl = make_ctrl(make_cache(gpu=2 * MIB, host=64 * MIB),
                     timing=PipelineTiming(kv_load_seconds=lambda b: b / 1e9), speculative=False)
    ctrl.process(Query("a", "?", ["d1"], [1500]))           # 1.5 MB: fills the gpu tier
    ctrl.process(Query("b", "?", ["d2"], [1500]))           # demotes d1 to host
    r = ctrl.process(Query("c", "?", ["d1"], [1500]))
    assert r.tier_hits == {"host": 1} and r.tier_hit_tokens == {"host": 1500}
    assert r.load_s == pytest.approx(1500 * KVB / 1e9)
    r2 = ctrl.process(Query("d", "?", ["d1"], [1500]))      # promoted by the previous hit
    assert r2.tier_hits == {"gpu": 1} and r2.load_s == 0.0


def test_iterative_hops_reuse_the_previous_hop():
    ctrl = make_ctrl(timing=PipelineTiming(retrieval_s=0.01), speculative=False)
    r = ctrl.process(Query("it", "?", ["a", "b", "c", "d"], [100, 100, 100, 100], hops=[2, 2]))
    # Hop 2 prefills [a, b, c, d] on top of hop 1's [a, b].
    assert r.hops == 2 and r.cached_tokens == 200 and r.cache_hit
    assert r.computed_tokens == 400 + 2 * 16


def test_no_cache_baseline_recomputes_everything():
    ctrl = make_ctrl(cache=None, speculative=False)
    res = ctrl.process_batch([Query(f"q{i}", "?", ["d1", "d2"], [100, 100]) for i in range(3)])
    assert all(r.cached_tokens == 0 and r.computed_tokens == 216 for r in res)
    m = ctrl.metrics()
    assert m.hit_rate == 0 and m.gpu_used_mib == 0 and m.queries == 3


def test_engine_returning_wrong_kv_count_is_an_error():
    class Bad(SimulatedEngine):
        def prefill(self, request):
            return PrefillResult(seconds=0.1, new_kv=[])

    cache = make_cache()
    ctrl = RAGServeController(Bad(LinearCost(), KVB), cache, PipelineTiming())
    with pytest.raises(RuntimeError, match="returned KV for 0 documents, expected 1"):
        ctrl.process(Query("q", "?", ["d"], [10]))
    assert cache.stats().num_nodes == 0


def test_document_larger_than_the_gpu_tier_is_kept_on_host_and_loaded_from_there():
    ctrl = make_ctrl(make_cache(gpu=1 * MIB, host=64 * MIB),
                     timing=PipelineTiming(kv_load_seconds=lambda b: b / 1e9), speculative=False)
    first = ctrl.process(Query("a", "?", ["big"], [2000]))   # 2 MB of KV: cannot live on the gpu tier
    assert first.stored_docs == 1
    assert dict(ctrl.cache.stats().used_bytes) == {"gpu": 0, "host": 2000 * KVB}
    r = ctrl.process(Query("b", "?", ["big"], [2000]))
    assert r.tier_hits == {"host": 1} and r.cached_tokens == 2000
    assert r.load_s == pytest.approx(2000 * KVB / 1e9) and r.prefill_s < first.prefill_s


def test_native_and_reference_trees_serve_a_trace_identically():
    from hyperrag.testing.reference_tree import ReferenceTree

    def serve(tree_cls):
        cache = cache_mod.KVCache(capacities={"gpu": 4 * MIB, "host": 16 * MIB}, policy="pgdsf",
                                  profile=make_profile(), block_bytes=4096, storage_scale=16, tree_cls=tree_cls)
        ctrl = make_ctrl(cache)
        res = ctrl.process_batch(trace(n=150, qps=100.0, seed=2))
        return [dataclasses.asdict(r) for r in res], ctrl.metrics().as_dict()

    native, reference = serve(None), serve(ReferenceTree)
    assert native == reference
    assert native[1]["evictions"]["gpu"] > 0
