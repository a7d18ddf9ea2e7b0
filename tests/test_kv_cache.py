"""KVCache: the tree's decisions applied to real bytes in per-tier block pools."""
import random
import threading

import numpy as np
import pytest
import torch

from hyperrag.cache import CapacityError, CostProfile, KnowledgeTree, KVCache, filler_payload

PROFILE = CostProfile([0, 1000, 4000], [1, 1000, 4000], [[0.001, 0.5, 2.5], [0.002, 0.6, 2.8], [0.003, 0.8, 3.2]])


def tree_classes():
    classes = [KnowledgeTree]
    try:  # helper A's pure-Python twin, when present: KVCache must work with either
        from hyperrag.testing.reference_tree import ReferenceTree
    except ImportError:
        return classes
    return classes + [ReferenceTree]


@pytest.fixture(params=tree_classes(), ids=lambda c: c.__module__)
def tree_cls(request):
    return request.param


def make_cache(tree_cls, gpu=3000, host=10000, **kw):
    kw.setdefault("block_bytes", 256)
    return KVCache({"gpu": gpu, "host": host}, profile=PROFILE, tree_cls=tree_cls, **kw)


def payload(nbytes, seed):
    return np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)


def check_consistent(cache, expected=None):
    """Pool bytes equal the tree's accounting, each node's blocks sit exactly in
    its resident tiers, and (if given) every node reads back its expected bytes."""
    used = {t: 0 for t in cache.tiers}
    tree_bytes = {t: 0 for t in cache.tiers}
    node_ids = cache.tree.node_ids()
    for nid in node_ids:
        info = cache.node(nid)
        assert set(cache._blocks[nid]) == set(info.resident_tiers), nid
        for t in info.resident_tiers:
            used[t] += -(-(info.nbytes // cache.storage_scale) // cache.block_bytes)
            tree_bytes[t] += info.nbytes
        if expected is not None:
            np.testing.assert_array_equal(cache.get(nid), expected[nid])
    assert set(cache._blocks) == set(node_ids)
    stats = cache.storage_stats()
    assert {t: stats[t]["blocks_used"] for t in cache.tiers} == used
    assert cache.stats().used_bytes == tree_bytes


def test_put_get_numpy_torch_and_filler(tree_cls):
    cache = make_cache(tree_cls)
    a = payload(1000, 1)
    t = torch.randn(200, dtype=torch.float32)  # 800 bytes
    r = cache.put("ns", ["d1", "d2", "d3"], [10, 8, 5], [1000, 800, 500], payloads=[a, t, None])
    assert list(r.created) == [True, True, True]
    np.testing.assert_array_equal(cache.get(r.node_ids[0]), a)
    back = torch.empty_like(t)
    cache.get(r.node_ids[1], out=back)  # straight into a tensor, no intermediate array
    assert torch.equal(back, t)
    np.testing.assert_array_equal(cache.get(r.node_ids[2]), filler_payload("ns", ["d1", "d2", "d3"], 500))
    # Existing nodes keep their bytes: a later payload for them is ignored.
    r2 = cache.put("ns", ["d1", "d4"], [10, 3], [1000, 300], payloads=[payload(1000, 9), None])
    assert list(r2.created) == [False, True]
    np.testing.assert_array_equal(cache.get(r.node_ids[0]), a)
    assert not np.array_equal(cache.get(r2.node_ids[1]), filler_payload("ns", ["d4"], 300))  # path matters
    check_consistent(cache)


def test_demotion_and_promotion_move_bytes(tree_cls):
    cache = make_cache(tree_cls, gpu=2000, host=10000)
    expected, ids = {}, []
    for i in range(4):  # 4 single-doc paths of 1000 bytes; gpu holds 2
        data = payload(1000, i)
        r = cache.put(f"ns{i}", ["doc"], [10], [1000], payloads=[data])
        ids.append(r.node_ids[0])
        expected[r.node_ids[0]] = data
    tiers = [cache.node(n).tier for n in ids]
    assert tiers.count("gpu") == 2 and tiers.count("host") == 2
    check_consistent(cache, expected)
    moved_before = cache.storage_stats()["transfer"].bytes
    assert moved_before == 2 * 1000  # two copied demotions
    host_node = next(n for n in ids if cache.node(n).tier == "host")
    cache.promote([host_node], tier="gpu")
    assert cache.node(host_node).resident_tiers == ["gpu", "host"]
    check_consistent(cache, expected)
    # Promotion copied 1000 bytes and the demotion it forced copied another 1000.
    assert cache.storage_stats()["transfer"].bytes == moved_before + 2000


def test_swap_out_only_once_frees_gpu_blocks_only(tree_cls):
    cache = make_cache(tree_cls, gpu=1000, host=10000)
    data = payload(1000, 7)
    (nid,) = cache.put("ns", ["x"], [10], [1000], payloads=[data]).node_ids
    cache.evict("gpu", 1000)  # first demotion copies
    assert cache.node(nid).resident_tiers == ["host"]
    cache.promote([nid])
    assert cache.node(nid).resident_tiers == ["gpu", "host"]
    host_blocks = list(cache._blocks[nid]["host"].ids)
    moved = cache.storage_stats()["transfer"].bytes
    evs = cache.evict("gpu", 1000)
    assert [(e.node_id, e.from_tier, e.to_tier, e.copied) for e in evs] == [(nid, "gpu", "host", False)]
    assert cache.storage_stats()["transfer"].bytes == moved  # nothing copied
    assert cache._blocks[nid]["host"].ids == host_blocks  # same host blocks kept
    assert cache.storage_stats()["gpu"]["blocks_used"] == 0
    np.testing.assert_array_equal(cache.get(nid), data)
    check_consistent(cache)


def test_access_promotes_hits_and_stores_new_nodes(tree_cls):
    cache = make_cache(tree_cls, gpu=2000, host=10000)
    d1 = payload(1000, 1)
    (n1,) = cache.put("ns", ["d1"], [10], [1000], payloads=[d1], tier="host").node_ids
    d2 = payload(1000, 2)
    r = cache.access("ns", ["d1", "d2"], [10, 10], [1000, 1000], payloads=[None, d2], lock=True)
    assert list(r.created) == [False, True] and list(r.promoted) == [n1]
    assert cache.node(n1).resident_tiers == ["gpu", "host"]
    np.testing.assert_array_equal(cache.get(n1), d1)
    np.testing.assert_array_equal(cache.get(r.node_ids[1]), d2)
    cache.unlock(r.node_ids)
    check_consistent(cache)


def test_put_below_a_demoted_prefix_copies_it_back_into_the_tier(tree_cls):
    cache = make_cache(tree_cls, gpu=2500, host=10000)
    d1, d2, x = payload(1000, 1), payload(500, 2), payload(1000, 3)
    n1, n2 = cache.put("ns", ["d1", "d2"], [10, 5], [1000, 500], payloads=[d1, d2]).node_ids
    (nx,) = cache.put("ns", ["x"], [10], [1000], payloads=[x]).node_ids
    cache.evict("gpu", 1500)  # the d1-d2 path leaves gpu; x stays
    assert cache.node(n1).tier == cache.node(n2).tier == "host"
    moved = cache.storage_stats()["transfer"].bytes
    d3 = payload(400, 4)
    r = cache.put("ns", ["d1", "d2", "d3"], [10, 5, 4], [1000, 500, 400], payloads=[None, None, d3])
    # d1 and d2 fill gpu beside x; room for d3 then demotes x (the promoted path is protected).
    assert list(r.promoted) == [n1, n2] and list(r.created) == [False, False, True]
    assert [(e.node_id, e.from_tier, e.to_tier) for e in r.evictions] == [(nx, "gpu", "host")]
    assert cache.node(n1).resident_tiers == cache.node(n2).resident_tiers == ["gpu", "host"]
    assert cache._blocks[n1]["gpu"] is not cache._blocks[n1]["host"]
    assert cache.storage_stats()["transfer"].bytes == moved + 1500 + 1000  # promotions + x's demotion
    check_consistent(cache, {n1: d1, n2: d2, nx: x, r.node_ids[2]: d3})
    # Reading from gpu returns the promoted bytes even once the host copies are gone.
    cache.evict("host", 2500)
    assert cache.node(n1).resident_tiers == cache.node(n2).resident_tiers == ["gpu"]
    np.testing.assert_array_equal(cache.get(n1), d1)
    np.testing.assert_array_equal(cache.get(n2), d2)
    check_consistent(cache)


def test_remove_and_set_capacity_free_blocks(tree_cls):
    cache = make_cache(tree_cls, gpu=4000, host=10000)
    r = cache.put("ns", ["a", "b", "c"], [1, 1, 1], [1000, 1000, 1000])
    cache.remove(r.node_ids[1])  # drops b and c
    assert cache.tree.node_ids() == [r.node_ids[0]]
    check_consistent(cache)
    cache.put("ns", ["a", "d", "e"], [1, 1, 1], [1000, 1000, 1000])
    cache.set_capacity("gpu", 1000)
    check_consistent(cache)
    assert cache.storage_stats()["gpu"]["blocks_used"] == 4  # one 1000-byte node in 256-byte blocks


def test_storage_scale_stores_small_blocks(tree_cls):
    cache = KVCache({"gpu": 4 << 30, "host": 16 << 30}, profile=PROFILE, storage_scale=1 << 16,
                    block_bytes=4096, tree_cls=tree_cls)
    assert cache.storage_stats()["gpu"]["blocks_total"] == 0  # storage grows as nodes arrive
    r = cache.put("ns", ["big"], [8000], [1 << 30])
    assert cache.storage_stats()["gpu"]["blocks_total"] * 4096 == (4 << 30) >> 16  # one 64 KiB segment
    assert cache.get(r.node_ids[0]).nbytes == (1 << 30) >> 16
    with pytest.raises(ValueError, match=r"payloads\[0\] has 10 bytes; doc_bytes\[0\] // storage_scale = 16384"):
        cache.put("ns", ["other"], [8000], [1 << 30], payloads=[np.zeros(10, np.uint8)])
    check_consistent(cache)


def test_bad_input_leaves_everything_unchanged(tree_cls):
    cache = make_cache(tree_cls)
    cache.put("ns", ["a"], [1], [500])
    before = (cache.stats().num_nodes, cache.storage_stats()["gpu"]["blocks_used"])
    with pytest.raises(ValueError, match="payloads has 1 entries for 2 doc_ids"):
        cache.put("ns", ["b", "c"], [1, 1], [500, 500], payloads=[None])
    with pytest.raises(ValueError, match="contiguous"):
        cache.put("ns", ["b"], [1], [500], payloads=[np.zeros(1000, np.uint8)[::2]])
    with pytest.raises(TypeError, match="payloads"):
        cache.put("ns", ["b"], [1], [500], payloads=[[0] * 500])
    with pytest.raises(ValueError, match="tier must be one of"):
        cache.put("ns", ["b"], [1], [500], tier="remote")
    with pytest.raises(ValueError):
        cache.put("ns", ["b"], [1], [-5])
    with pytest.raises(KeyError):
        cache.get(12345)
    with pytest.raises(ValueError, match="out has 10 bytes"):
        cache.get(cache.tree.node_ids()[0], out=np.empty(10, np.uint8))
    for bad in ({"block_bytes": 0}, {"storage_scale": -1}, {"storage_scale": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_cache(tree_cls, **bad)
    assert (cache.stats().num_nodes, cache.storage_stats()["gpu"]["blocks_used"]) == before
    # A locked set that leaves no room: CapacityError, pools untouched.
    cache.lock(cache.tree.node_ids())
    with pytest.raises(CapacityError):
        cache.put("ns", ["huge"], [1], [2900], payloads=[payload(2900, 0)])
    assert (cache.stats().num_nodes, cache.storage_stats()["gpu"]["blocks_used"]) == before
    check_consistent(cache)


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_keep_pools_and_tree_in_step(tree_cls, seed):
    rng = random.Random(seed)
    cache = make_cache(tree_cls, gpu=6000, host=15000, block_bytes=128)
    expected = {}
    locked = []
    docs = [f"d{i}" for i in range(8)]
    for step in range(150):
        op = rng.choice(["put", "put", "access", "promote", "lock", "unlock", "evict", "remove", "get"])
        try:
            if op in ("put", "access"):
                path = rng.sample(docs, rng.randint(1, 3))
                sizes = [100 * (1 + docs.index(d)) for d in path]  # a doc's size is fixed
                data = [payload(s, rng.randrange(1 << 30)) for s in sizes]
                tier = rng.choice(cache.tiers)
                if op == "put":
                    r = cache.put("ns", path, [s // 10 for s in sizes], sizes, payloads=data, tier=tier)
                else:
                    r = cache.access("ns", path, [s // 10 for s in sizes], sizes, payloads=data, tier=tier)
                for nid, created, d in zip(r.node_ids, r.created, data):
                    if created:
                        expected[nid] = d
            elif op == "promote" and expected:
                cache.promote([rng.choice(list(expected))], tier="gpu")
            elif op == "lock" and expected:
                nid = rng.choice(list(expected))
                cache.lock([nid])
                locked.append(nid)
            elif op == "unlock" and locked:
                cache.unlock([locked.pop(rng.randrange(len(locked)))])
            elif op == "evict":
                cache.evict(rng.choice(cache.tiers), rng.randint(1, 3000))
            elif op == "remove" and expected:
                cache.remove(rng.choice(list(expected)))
        except (ValueError, KeyError):
            pass  # refused operations (locked, parent not fast enough, capacity) must change nothing
        live = set(cache.tree.node_ids())
        expected = {n: d for n, d in expected.items() if n in live}
        locked = [n for n in locked if n in live]
        check_consistent(cache, expected if op == "get" or step % 25 == 0 else None)
    check_consistent(cache, expected)


def test_concurrent_clients(tree_cls):
    cache = make_cache(tree_cls, gpu=8000, host=20000, block_bytes=128)
    errors = []

    def client(seed):
        rng = random.Random(seed)
        for _ in range(60):
            path = rng.sample([f"d{i}" for i in range(6)], rng.randint(1, 3))
            sizes = [200 * (1 + int(d[1:])) for d in path]
            try:
                r = cache.access("ns", path, [1] * len(path), sizes, lock=True)
            except ValueError:
                continue
            try:
                for nid, d in zip(r.node_ids, range(len(path))):
                    got = cache.get(nid)
                    if not np.array_equal(got, filler_payload("ns", path[: d + 1], sizes[d])):
                        errors.append((seed, path))
            finally:
                cache.unlock(r.node_ids)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check_consistent(cache)
