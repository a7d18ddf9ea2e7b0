"""The Python face of the native tree: exports, stubs, result types, reference agreement."""
import ast
import pathlib
import random

import numpy as np
import pytest

import hyperrag._core as core
import hyperrag.cache as cache
from hyperrag.cache import tree as tree_module
from hyperrag.cache import CostProfile, KnowledgeTree
from hyperrag.testing.reference_tree import ReferenceCostProfile, ReferenceTree

GRID = ([0, 512, 2048], [64, 512, 2048], [[0.01, 0.05, 0.2], [0.02, 0.08, 0.3], [0.05, 0.15, 0.5]])


def test_exports_and_stubs_name_real_objects():
    for name in tree_module.__all__:
        assert getattr(cache, name) is getattr(core, name)
    assert issubclass(cache.CapacityError, ValueError)
    assert issubclass(cache.UnknownNodeError, KeyError)
    stub = pathlib.Path(core.__file__).with_name("_core.pyi")
    if not stub.exists():  # editable installs load the module from the build tree
        stub = pathlib.Path(cache.__file__).parents[1] / "_core.pyi"
    text = stub.read_text()
    tree_part = ast.parse(text.split("# --- storage ---")[0])
    for node in tree_part.body:
        if isinstance(node, ast.ClassDef):
            cls = getattr(core, node.name)
            for item in node.body:
                name = getattr(item, "name", None) or getattr(getattr(item, "target", None), "id", None)
                if name and not name.startswith("__"):
                    assert hasattr(cls, name), f"{node.name}.{name} is in the stub but not the module"


def test_cost_profile_from_numpy_matches_reference_bit_for_bit():
    table = np.array(GRID[2])
    native = CostProfile(np.array(GRID[0]), np.array(GRID[1]), table)
    ref = ReferenceCostProfile(*GRID)
    rng = random.Random(0)
    for _ in range(2000):
        c, n = rng.uniform(-10, 3000), rng.uniform(1, 4000)
        assert native.seconds(c, n) == ref.seconds(c, n)
    assert native.table == GRID[2]
    assert native.cost_per_token(512, 512) == pytest.approx(0.08 / 512)


def test_result_objects_use_tier_names():
    tree = KnowledgeTree({"gpu": 250, "host": 1000}, "lru")
    assert tree.tiers == ["gpu", "host"] and tree.policy == "lru"
    a = tree.insert("m", ["a"], [10], [100]).node_ids[0]
    r = tree.insert("m", ["b", "c"], [10, 10], [100, 100])
    assert r.created == [True, True]
    (ev,) = r.evictions
    assert (ev.node_id, ev.from_tier, ev.to_tier, ev.copied, ev.nbytes) == (a, "gpu", "host", True, 100)
    assert "to_tier='host'" in repr(ev) and ev == ev
    m = tree.match("m", ["a", "x"])
    assert (m.node_ids, m.tiers, m.tokens, m.matched_docs, m.matched_tokens) == ([a], ["host"], [10], 1, 10)
    info = tree.node(a)
    assert (info.doc_id, info.namespace, info.parent, info.tier, info.resident_tiers) == ("a", "m", None, "host", ["host"])
    assert tree.node(r.node_ids[1]).parent == r.node_ids[0]
    s = tree.stats()
    assert s.used_bytes == {"gpu": 200, "host": 100}
    assert s.capacity_bytes == {"gpu": 250, "host": 1000}
    assert s.evictions == {"gpu": 1, "host": 0}
    assert set(s.clock) == {"gpu", "host"}
    (dropped,) = tree.evict("host", 1)
    assert dropped.to_tier is None
    acc = tree.access("m", ["b", "c", "d"], [10, 10, 10], [100, 100, 50])
    assert acc.hit_tiers == ["gpu", "gpu"] and acc.created == [False, False, True] and acc.promoted == []


@pytest.mark.parametrize("policy", ["pgdsf", "gdsf", "lru", "lfu"])
def test_native_and_reference_agree_on_a_long_trace(policy):
    caps = {"gpu": 20_000, "host": 40_000, "remote": 60_000}
    native = KnowledgeTree(caps, policy, CostProfile(*GRID))
    ref = ReferenceTree(caps, policy, ReferenceCostProfile(*GRID))
    rng = random.Random(1)
    sizes = {}
    for _ in range(2000):
        docs = [f"d{d}" for d in rng.sample(range(40), 3)]
        for d in docs:
            sizes.setdefault(d, (rng.randint(64, 2048), rng.randint(500, 4000)))
        tokens, nbytes = [sizes[d][0] for d in docs], [sizes[d][1] for d in docs]
        a, b = native.access("ns", docs, tokens, nbytes), ref.access("ns", docs, tokens, nbytes)
        assert a.matched_docs == b.matched_docs
        assert [(e.from_tier, e.to_tier, e.copied, e.nbytes) for e in a.evictions] == \
               [(e.from_tier, e.to_tier, e.copied, e.nbytes) for e in b.evictions]
    sa, sb = native.stats(), ref.stats()
    assert (sa.num_nodes, sa.used_bytes, sa.evictions, sa.clock, sa.hits, sa.hit_tokens) == \
           (sb.num_nodes, sb.used_bytes, sb.evictions, sb.clock, sb.hits, sb.hit_tokens)
    assert sa.evictions["remote"] > 0  # the trace exercised the whole cascade
    assert native.check_invariants() == [] and ref.check_invariants() == []


def _profiles():
    return {KnowledgeTree: CostProfile(*GRID), ReferenceTree: ReferenceCostProfile(*GRID)}


@pytest.mark.parametrize("cls", [KnowledgeTree, ReferenceTree], ids=["native", "reference"])
def test_insert_promotes_a_demoted_prefix(cls):
    tree = cls({"gpu": 300, "host": 1000}, "pgdsf", _profiles()[cls])
    a, b = tree.insert("m", ["a", "b"], [64, 64], [100, 100]).node_ids
    tree.evict("gpu", 200)                       # b, then a: gpu -> host
    (x,) = tree.insert("m", ["x"], [64], [200]).node_ids
    tick = tree.node(x).last_access
    r = tree.insert("m", ["a", "b", "c"], [64, 64, 64], [100, 100, 100])
    # Room for a and b in gpu demotes x; then c fits beside them.
    assert list(r.promoted) == [a, b] and list(r.created) == [False, False, True]
    assert [(e.node_id, e.from_tier, e.to_tier, e.copied) for e in r.evictions] == [(x, "gpu", "host", True)]
    assert tree.node(a).resident_tiers == tree.node(b).resident_tiers == ["gpu", "host"]
    c = tree.node(r.node_ids[2])
    assert (c.parent, c.tier) == (b, "gpu")
    assert tree.stats().used_bytes == {"gpu": 300, "host": 400}  # a b c | a b x
    # A promotion is an access: a, b and then c were touched after x, in path order.
    assert tick < tree.node(a).last_access < tree.node(b).last_access < c.last_access
    assert tree.check_invariants() == []


@pytest.mark.parametrize("cls", [KnowledgeTree, ReferenceTree], ids=["native", "reference"])
def test_insert_whose_promotion_finds_only_locked_nodes_changes_nothing(cls):
    tree = cls({"gpu": 400, "host": 1000}, "lru")
    a, b = tree.insert("m", ["a", "b"], [1, 1], [100, 100]).node_ids
    tree.evict("gpu", 200)
    (x,) = tree.insert("m", ["x"], [1], [100]).node_ids
    tree.insert("m", ["y"], [1], [100])
    tree.lock([x])

    def state():
        s = tree.stats()
        return (s.used_bytes, s.evictions, s.clock, s.num_nodes,
                [(tree.node(i).resident_tiers, tree.node(i).last_access, tree.node(i).priorities)
                 for i in tree.node_ids()])

    before = state()
    # a and b fit, c does not once y is demoted: the promotion is rolled back with the rest.
    with pytest.raises(cache.CapacityError, match=r"insert: cannot make room for 200 bytes in tier 'gpu'"):
        tree.insert("m", ["a", "b", "c"], [1, 1, 1], [100, 100, 200])
    assert state() == before and tree.node(a).tier == "host"
    assert tree.check_invariants() == []


BOTH = pytest.mark.parametrize("cls", [KnowledgeTree, ReferenceTree], ids=["native", "reference"])


def _state(tree):
    s = tree.stats()
    return (s.num_nodes, s.used_bytes, s.capacity_bytes, s.evictions, s.clock, s.lookups, s.hits, s.hit_tokens,
            s.lookup_tokens, s.interned_names,
            [(i, tree.node(i).resident_tiers, tree.node(i).priorities, tree.node(i).last_access,
              tree.node(i).lock_count) for i in tree.node_ids()])


@BOTH
def test_any_subset_of_tiers_demotes_into_the_next_configured_one(cls):
    tree = cls({"remote": 1000, "gpu": 250}, "lru")
    assert list(tree.tiers) == ["gpu", "remote"]
    a = tree.insert("m", ["a"], [1], [100]).node_ids[0]
    (ev,) = tree.insert("m", ["b", "c"], [1, 1], [100, 100]).evictions
    assert (ev.node_id, ev.from_tier, ev.to_tier, ev.copied) == (a, "gpu", "remote", True)
    s = tree.stats()
    assert s.used_bytes == {"gpu": 200, "remote": 100}
    assert s.capacity_bytes == {"gpu": 250, "remote": 1000} and s.evictions == {"gpu": 1, "remote": 0}
    assert set(s.clock) == {"gpu", "remote"}
    for call in (lambda: tree.insert("m", ["x"], [1], [1], "host"), lambda: tree.access("m", ["x"], [1], [1], "host"),
                 lambda: tree.evict("host", 1), lambda: tree.promote([a], "host"),
                 lambda: tree.set_capacity("host", 10)):
        with pytest.raises(ValueError, match=r"tier 'host' is not configured \(this tree has: gpu, remote\)"):
            call()
    tree.promote([a], "gpu")                     # back from remote, keeping the remote copy
    assert tree.node(a).resident_tiers == ["gpu", "remote"]
    assert tree.check_invariants() == []

    single = cls({"host": 250}, "lru")
    assert list(single.tiers) == ["host"]
    x = single.insert("m", ["a"], [1], [100], "host").node_ids[0]
    (ev,) = single.insert("m", ["b", "c"], [1, 1], [100, 100], "host").evictions
    assert (ev.node_id, ev.from_tier, ev.to_tier, ev.copied) == (x, "host", None, False)  # one tier: dropped
    assert single.stats().used_bytes == {"host": 200}
    with pytest.raises(ValueError, match=r"tier 'gpu' is not configured \(this tree has: host\)"):
        single.insert("m", ["z"], [1], [1])      # the default tier is gpu
    assert single.check_invariants() == []


@BOTH
def test_peek_records_nothing_and_match_can_lock_what_it_found(cls):
    tree = cls({"gpu": 1000}, "lru")
    ids = list(tree.insert("m", ["a", "b"], [10, 20], [100, 100]).node_ids)
    before = _state(tree)
    p = tree.peek("m", ["a", "b", "c"])
    assert (list(p.node_ids), p.tiers, p.tokens, p.matched_docs, p.matched_tokens) == \
           (ids, ["gpu", "gpu"], [10, 20], 2, 30)
    assert list(tree.peek("other", ["a"]).node_ids) == []
    assert _state(tree) == before                # no lookup, no hit, no access, no lock
    with pytest.raises(ValueError, match="peek: doc_ids must not be empty"):
        tree.peek("m", [])
    with pytest.raises(ValueError, match="peek: namespace must be a non-empty string"):
        tree.peek("", ["a"])
    with pytest.raises(ValueError, match="peek: doc_ids has 'a' more than once|peek: doc_ids has a document"):
        tree.peek("m", ["a", "a"])

    m = tree.match("m", ["a", "b", "c"], lock=True)
    assert list(m.node_ids) == ids and [tree.node(i).lock_count for i in ids] == [1, 1]
    s = tree.stats()
    assert (s.lookups, s.hits, s.hit_tokens) == (1, 1, 30)
    with pytest.raises(cache.CapacityError):     # what the match locked cannot be evicted
        tree.insert("m", ["z"], [1], [900])
    assert list(tree.match("m", ["x"], lock=True).node_ids) == []  # a miss locks nothing
    tree.unlock(ids)
    assert [tree.node(i).lock_count for i in ids] == [0, 0]
    assert tree.check_invariants() == []


@BOTH
def test_insert_lock_locks_the_whole_path_once(cls):
    tree = cls({"gpu": 300, "host": 1000}, "lru")
    a = tree.insert("m", ["a"], [1], [100]).node_ids[0]
    r = tree.insert("m", ["a", "b"], [1, 1], [100, 100], lock=True)
    assert r.node_ids[0] == a and list(r.created) == [False, True]
    assert [tree.node(i).lock_count for i in r.node_ids] == [1, 1]
    again = tree.insert("m", ["a", "b"], [1, 1], [100, 100], "gpu", True)  # nothing created: still locks
    assert list(again.created) == [False, False] and [tree.node(i).lock_count for i in r.node_ids] == [2, 2]
    with pytest.raises(cache.CapacityError, match="cannot make room"):       # the locked path stays
        tree.insert("m", ["c", "d"], [1, 1], [100, 100])
    tree.unlock(list(r.node_ids) * 2)
    assert len(tree.insert("m", ["c", "d"], [1, 1], [100, 100]).evictions) == 1  # b, now a leaf
    assert tree.check_invariants() == []


@BOTH
def test_an_oversized_request_fails_fast_and_changes_nothing(cls):
    tree = cls({"gpu": 300, "host": 1000}, "lru")
    a, b = tree.insert("m", ["a", "b"], [1, 1], [100, 100]).node_ids
    tree.evict("gpu", 200)                       # a and b: gpu -> host
    tree.insert("m", ["x"], [1], [100])
    before = _state(tree)
    # Promoting a and b (200) plus c (101) needs 301 of 300 bytes: refused before any eviction.
    with pytest.raises(cache.CapacityError, match=r"insert: needs 301 bytes in tier 'gpu' but its capacity is 300"):
        tree.insert("m", ["a", "b", "c"], [1, 1, 1], [100, 100, 101])
    with pytest.raises(cache.CapacityError, match=r"access: needs 400 bytes in tier 'gpu' but its capacity is 300"):
        tree.access("m", ["y"], [1], [400])
    # Sums that would overflow int64 are still refused as too large (never wrapped into "fits").
    with pytest.raises(cache.CapacityError, match=r"insert: needs (more than )?\d+ bytes in tier 'host'"):
        tree.insert("m", ["p", "q"], [1, 1], [2**62, 2**62], "host")
    assert _state(tree) == before
    tree.set_capacity("gpu", 150)                # drops x to host
    before = _state(tree)
    with pytest.raises(cache.CapacityError, match=r"promote: needs 200 bytes in tier 'gpu' but its capacity is 150"):
        tree.promote([a, b], "gpu")
    assert _state(tree) == before
    tree.set_capacity("gpu", 300)
    r = tree.insert("m", ["a", "b", "c"], [1, 1, 1], [100, 100, 100])  # exactly the capacity fits
    assert list(r.promoted) == [a, b] and tree.stats().used_bytes["gpu"] == 300
    assert tree.check_invariants() == []


@BOTH
def test_remove_document_drops_its_unpinned_nodes_everywhere(cls):
    tree = cls({"gpu": 10_000, "host": 10_000}, "lru")
    p1 = list(tree.insert("m1", ["a", "b", "c"], [1] * 3, [100] * 3, "host").node_ids)
    tree.promote(p1, "gpu")                      # resident in gpu and host
    p2 = list(tree.insert("m1", ["b", "d"], [1] * 2, [100] * 2).node_ids)   # b first in the path
    p3 = list(tree.insert("m2", ["x", "b"], [1] * 2, [100] * 2).node_ids)   # b in another namespace
    p4 = list(tree.insert("m2", ["y", "b", "z"], [1] * 3, [100] * 3).node_ids)
    tree.lock([p4[2]])                           # z locked: its b is pinned
    assert tree.stats().interned_names == 7 + 2  # a b c d x y z; m1 m2
    s0 = tree.stats()
    r = tree.remove_document("b")
    assert r.kept_locked == 1
    events = [(e.node_id, e.from_tier, e.to_tier, e.copied, e.nbytes) for e in r.evictions]
    expected = [(p1[2], "gpu"), (p1[2], "host"), (p1[1], "gpu"), (p1[1], "host"), (p2[1], "gpu"), (p2[0], "gpu"),
                (p3[1], "gpu")]
    assert sorted(events) == sorted((i, t, None, False, 100) for i, t in expected)
    # Ascending id of the document's nodes, each subtree children first, copies fastest first.
    owner = {p1[2]: p1[1], p1[1]: p1[1], p2[1]: p2[0], p2[0]: p2[0], p3[1]: p3[1]}
    owners = [owner[e.node_id] for e in r.evictions]
    assert owners == sorted(owners)
    for i in owner:
        mine = [e.from_tier for e in r.evictions if e.node_id == i]
        assert mine == sorted(mine, key=["gpu", "host"].index)
    order = [e.node_id for e in r.evictions]
    assert order.index(p1[2]) < order.index(p1[1]) and order.index(p2[1]) < order.index(p2[0])
    s = tree.stats()
    assert (s.evictions, s.clock) == (s0.evictions, s0.clock)
    assert sorted(tree.node_ids()) == sorted([p1[0], p3[0]] + p4)
    assert s.num_nodes == 5 and s.interned_names == 5 + 2  # a x y b z; m1 m2
    assert s.used_bytes == {"gpu": 500, "host": 100}
    assert (list(tree.remove_document("nope").evictions), tree.remove_document("nope").kept_locked) == ([], 0)
    with pytest.raises(ValueError):
        tree.remove_document("")
    tree.unlock([p4[2]])
    r = tree.remove_document("b")
    assert r.kept_locked == 0 and [e.node_id for e in r.evictions] == [p4[2], p4[1]]
    tree.remove_document("a")                    # m1 has no document left: its name goes too
    assert tree.stats().interned_names == 2 + 1  # x y; m2
    assert tree.check_invariants() == []
