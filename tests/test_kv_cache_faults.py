"""KVCache transactions under injected allocation and copy failures, tier subsets,
memory limits and document versions."""
import random

import numpy as np
import pytest

from hyperrag.cache import KnowledgeTree, KVCache, StorageError
from hyperrag.cache import kv_cache as kv
from test_kv_cache import PROFILE, check_consistent, payload


class Faults:
    """Makes the n-th storage allocation or KV copy fail (or each with probability p)."""

    def __init__(self, monkeypatch, rng=None, p=0.0):
        self.rng, self.p, self.fail_at, self.calls, self.failed = rng, p, set(), 0, 0
        allocate, copy = kv._TierStore.allocate, kv.KVCache._copy

        def maybe_fail(what):
            self.calls += 1
            if self.calls in self.fail_at or (self.rng is not None and self.rng.random() < self.p):
                self.failed += 1
                raise MemoryError(f"injected {what} failure") if what == "allocation" else \
                    StorageError(f"injected {what} failure")

        def failing_allocate(store, nbytes):
            maybe_fail("allocation")
            return allocate(store, nbytes)

        def failing_copy(cache, moves):
            if moves:
                maybe_fail("copy")
            return copy(cache, moves)

        monkeypatch.setattr(kv._TierStore, "allocate", failing_allocate)
        monkeypatch.setattr(kv.KVCache, "_copy", failing_copy)


def tree_state(cache):
    s = cache.stats()
    nodes = [(n, cache.node(n).resident_tiers, cache.node(n).lock_count) for n in cache.tree.node_ids()]
    pools = {t: cache.storage_stats()[t]["blocks_used"] for t in cache.tiers}
    return s.num_nodes, s.used_bytes, s.evictions, s.clock, nodes, pools


def make(gpu=3000, host=6000, **kw):
    return KVCache({"gpu": gpu, "host": host}, profile=PROFILE, block_bytes=128, **kw)


def test_failed_put_staging_changes_nothing(monkeypatch):
    cache = make()
    cache.put("ns", ["a"], [1], [1000], payloads=[payload(1000, 1)], tier="host")
    before = tree_state(cache)
    faults = Faults(monkeypatch)
    # Calls of one put: allocate + copy for the promoted prefix node 'a', allocate for 'b'.
    for k in range(3):
        faults.fail_at = {faults.calls + 1 + k}
        with pytest.raises((MemoryError, StorageError), match="injected"):
            cache.put("ns", ["a", "b"], [1, 1], [1000, 500])
        assert tree_state(cache) == before
    check_consistent(cache)
    r = cache.put("ns", ["a", "b"], [1, 1], [1000, 500])  # no more faults: it goes through
    assert list(r.created) == [False, True] and list(r.promoted) == [r.node_ids[0]]
    check_consistent(cache)


def test_failed_demotion_drops_the_node_and_keeps_accounting(monkeypatch):
    cache = make(gpu=2000)
    x = cache.put("ns", ["x"], [1], [1000]).node_ids[0]
    cache.put("ns", ["y"], [1], [1000])
    faults = Faults(monkeypatch)
    faults.fail_at = {2}  # 1: the new payload; 2: the copy demoting x (oldest by PGDSF tick) to host
    r = cache.put("ns", ["z"], [1], [1000])
    demoted = r.evictions[0].node_id
    assert demoted == x and demoted not in cache.tree.node_ids()  # dropped, not served without bytes
    assert cache.storage_stats()["errors"] == 1
    check_consistent(cache)
    assert cache.put("ns", ["w"], [1], [1000]).created[0]
    check_consistent(cache)


def test_lost_node_locked_by_a_reader_is_refused_then_dropped(monkeypatch):
    cache = make(gpu=1000)
    a = cache.put("ns", ["a"], [1], [1000]).node_ids[0]
    cache.tree.lock([a])  # a reader holds it; evicting it from gpu must still happen... by demotion
    cache.tree.unlock([a])
    faults = Faults(monkeypatch)
    faults.fail_at = {1}
    evs = cache.evict("gpu", 1)  # the copy to host fails: a is lost
    assert [e.node_id for e in evs] == [a] and a not in cache.tree.node_ids()
    check_consistent(cache)


@pytest.mark.parametrize("seed", range(6))
def test_random_faults_never_break_consistency(monkeypatch, seed):
    rng = random.Random(seed)
    cache = make(gpu=4000, host=9000)
    faults = Faults(monkeypatch, rng, p=0.15)
    docs = [f"d{i}" for i in range(10)]
    expected = {}
    for step in range(200):
        op = rng.choice(["put", "put", "access", "promote", "evict", "remove_document"])
        before = tree_state(cache)
        try:
            if op in ("put", "access"):
                path = rng.sample(docs, rng.randint(1, 3))
                sizes = [100 * (1 + docs.index(d)) for d in path]
                data = [payload(s, rng.randrange(1 << 30)) for s in sizes]
                call = cache.put if op == "put" else cache.access
                r = call("ns", path, [1] * len(path), sizes, payloads=data, tier=rng.choice(cache.tiers))
                expected.update({n: d for n, c, d in zip(r.node_ids, r.created, data) if c})
            elif op == "promote" and expected:
                cache.promote([rng.choice(list(expected))], tier="gpu")
            elif op == "evict":
                cache.evict(rng.choice(cache.tiers), rng.randint(1, 3000))
            elif op == "remove_document":
                cache.remove_document(rng.choice(docs))
        except (MemoryError, StorageError):
            assert tree_state(cache) == before, f"step {step}: a failed {op} changed the cache"
        except ValueError:
            pass  # refused (capacity, parent not in a fast enough tier)
        live = set(cache.tree.node_ids())
        expected = {n: d for n, d in expected.items() if n in live}
        check_consistent(cache, expected)
    assert faults.failed > 10
    faults.p = 0.0
    r = cache.put("ns", ["fresh"], [1], [100], payloads=[payload(100, 5)])
    assert r.created[0]
    expected = {n: d for n, d in expected.items() if n in set(cache.tree.node_ids())}
    check_consistent(cache, {**expected, r.node_ids[0]: payload(100, 5)})


def test_nodes_span_segments_and_storage_grows_on_demand():
    cache = KVCache({"gpu": 10_000}, policy="lru", block_bytes=100)
    assert cache.storage_stats()["gpu"]["segments"] == 0
    cache._stores["gpu"].segment_blocks = 7  # small segments, so a node crosses them
    a = cache.put("ns", ["a"], [1], [1300]).node_ids[0]  # a segment of 13 blocks
    b = cache.put("ns", ["b"], [1], [1300], payloads=[payload(1300, 2)]).node_ids[0]
    cache.remove(a)
    c = cache.put("ns", ["c"], [1], [2000], payloads=[payload(2000, 3)]).node_ids[0]  # 13 free + a new 7
    assert [len(ids) for _, ids in cache._blocks[c]["gpu"].runs] == [13, 7]
    assert cache.storage_stats()["gpu"]["segments"] == 3
    np.testing.assert_array_equal(cache.get(c), payload(2000, 3))
    np.testing.assert_array_equal(cache.get(b), payload(1300, 2))
    check_consistent(cache)


def test_tier_subsets_and_unallocatable_capacities():
    cache = KVCache({"gpu": 1000, "remote": 5000}, policy="lru", block_bytes=100)
    assert cache.tiers == ["gpu", "remote"]
    a = cache.put("ns", ["a"], [1], [800], payloads=[payload(800, 1)]).node_ids[0]
    cache.put("ns", ["b"], [1], [800])
    assert cache.node(a).resident_tiers == ["remote"]
    np.testing.assert_array_equal(cache.get(a), payload(800, 1))
    check_consistent(cache)
    host_only = KVCache({"host": 1000}, policy="lru")
    assert host_only.put("ns", ["a"], [1], [10], tier="host").created[0]
    with pytest.raises(ValueError, match=r"capacities need .* bytes of host memory \(gpu=1125899906842624 bytes"):
        KVCache({"gpu": 2**50}, policy="lru")
    # storage_scale makes a large logical budget small in memory
    assert KVCache({"gpu": 2**50}, policy="lru", storage_scale=2**30).tiers == ["gpu"]


def test_track_version_drops_the_old_content_and_stays_bounded():
    cache = make()
    old = cache.put("ns", ["d#v1", "e#v1"], [1, 1], [100, 100]).node_ids
    cache.put("other", ["x", "d#v1"], [1, 1], [100, 100])
    assert cache.track_version("d", "d#v1") == 0
    assert cache.track_version("d", "d#v2") == 2  # both nodes of the old content
    assert cache.tree.document_nodes("d#v1") == 0 and old[0] not in cache.tree.node_ids()
    check_consistent(cache)
    # A locked old node stays until unlocked, but new requests never reach it.
    held = cache.put("ns", ["d#v2"], [1], [100], lock=True).node_ids
    assert cache.track_version("d", "d#v3") == 0
    cache.unlock(held)
    for i in range(10_000):
        cache.track_version(f"gone{i}", f"gone{i}#v")  # ids whose documents left the tree
    assert len(cache._versions) < 10_000


def test_a_query_whose_store_fails_is_still_served_and_the_next_succeeds(monkeypatch):
    from hyperrag import RAGOptimize, RAGOptimizeConfig
    from hyperrag.serve import Query

    ctrl = RAGOptimize(RAGOptimizeConfig()).build_controller(speculative=False)
    faults = Faults(monkeypatch)
    faults.fail_at = {1}  # the first staged allocation of the store
    r = ctrl.process(Query("q1", "?", ["a", "b"], [300, 200]))
    assert r.stored_docs == 0 and r.ttft_s > 0
    assert ctrl.metrics().store_errors == 1 and ctrl.cache.stats().num_nodes == 0
    r = ctrl.process(Query("q2", "?", ["a", "b"], [300, 200]))
    assert r.stored_docs == 2
    assert ctrl.process(Query("q3", "?", ["a", "b"], [300, 200])).cached_tokens == 500
    check_consistent(ctrl.cache)
    assert all(ctrl.cache.node(n).lock_count == 0 for n in ctrl.cache.tree.node_ids())
