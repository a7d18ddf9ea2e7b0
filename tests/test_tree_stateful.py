"""The native KnowledgeTree against the pure-Python reference, step by step.

Hypothesis drives random match (optionally locking), peek, insert (optionally
locking; also along cached paths, so that they promote demoted prefixes, and
sized to overflow a tier), access, lock/unlock/touch/record_compute, evict,
promote, remove, remove_document and set_capacity on both, in trees whose
tiers are any subset of gpu, host, remote (with {gpu, remote}, gpu demotes to
remote). After every step the two must agree on every node (tiers,
priorities, locks, frequency, last access, children) and on the stats (bytes
per tier, evictions, clocks, interned names), and both must pass their
invariant checks; eviction steps also check that victims were unlocked leaves
of their tier.
"""
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hyperrag.cache import CapacityError, CostProfile, KnowledgeTree, UnknownNodeError
from hyperrag.testing.reference_tree import ReferenceCostProfile, ReferenceTree

GRID = ([0, 256, 1024, 4096], [64, 256, 1024], [[0.004, 0.012, 0.05], [0.006, 0.02, 0.07],
                                               [0.012, 0.04, 0.13], [0.04, 0.1, 0.3]])
DOCS = {"a": (64, 100), "b": (200, 150), "c": (512, 250), "d": (1000, 300), "e": (2048, 400), "f": (128, 120)}
TIERS = ("gpu", "host", "remote")
CAPS = {"gpu": 700, "host": 1000, "remote": 1300}
# Prefixes and non-prefix subsets (a tier demotes into the next slower configured one),
# weighted towards three tiers, where cascades are longest.
TIER_SETS = [("gpu", "host", "remote")] * 3 + [("gpu", "host")] * 2 + [("gpu", "remote")] * 2 + \
    [("gpu",), ("host",), ("host", "remote"), ("remote",)]
paths = st.lists(st.sampled_from(sorted(DOCS)), min_size=1, max_size=3, unique=True)
namespaces = st.sampled_from(["m1", "m2"])


def size_of(doc):
    """(tokens, bytes) of a document: DOCS, or "x<bytes>" made by the oversized rule."""
    return DOCS[doc] if doc in DOCS else (64, int(doc[1:]))


def note(label):
    if currently_in_test_context():  # the fixed-sequence tests below run outside Hypothesis
        event(label)


def outcome(fn):
    """(result, None) or (None, error category)."""
    try:
        return fn(), None
    except CapacityError:
        return None, "capacity"
    except UnknownNodeError:
        return None, "unknown"
    except ValueError:
        return None, "value"


def stat_tuple(s):
    return (s.num_nodes, s.used_bytes, s.capacity_bytes, s.evictions, s.clock, s.lookups, s.hits,
            s.hit_tokens, s.lookup_tokens, s.interned_names)


class TreeVersusReference(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(["pgdsf", "gdsf", "lru", "lfu"]), tiers=st.sampled_from(TIER_SETS))
    def build(self, policy, tiers):
        caps = {t: CAPS[t] for t in tiers}
        self.tiers = tuple(t for t in TIERS if t in tiers)
        note(f"tiers: {'+'.join(self.tiers)}")
        self.cpp = KnowledgeTree(caps, policy, CostProfile(*GRID))
        self.ref = ReferenceTree(caps, policy, ReferenceCostProfile(*GRID))
        self.to_ref = {}          # native id -> reference id
        self.dead = []            # ids of removed nodes (stale handles)
        self.docs_used = set()    # document names ever inserted

    # ------------------------------------------------------------ helpers
    def same(self, fn_cpp, fn_ref):
        rc, ec = outcome(fn_cpp)
        rr, er = outcome(fn_ref)
        assert ec == er, (ec, er)
        note(f"outcome: {ec or 'ok'}")
        return rc, rr

    def map_ids(self, cpp_ids, ref_ids):
        for c, r in zip(cpp_ids, ref_ids):
            assert self.to_ref.setdefault(c, r) == r

    def ids(self, cpp_ids):
        return [self.to_ref.get(i, -1) for i in cpp_ids]

    def evictions(self, evs):
        return [(self.to_ref[e.node_id], e.from_tier, e.to_tier, e.copied, e.nbytes) for e in evs]

    def compare_evictions(self, ec, er, ordered=True):
        if ec:
            note("evictions: " + ", ".join(sorted({f"{e.from_tier}->{e.to_tier}{'' if e.copied or not e.to_tier else ' kept copy'}" for e in ec})))
        a = self.evictions(ec)
        b = [(e.node_id, e.from_tier, e.to_tier, e.copied, e.nbytes) for e in er]
        assert (a if ordered else sorted(a, key=repr)) == (b if ordered else sorted(b, key=repr))
        live = set(self.cpp.node_ids())
        self.dead.extend(e.node_id for e in ec if e.node_id not in live)

    def stats_both(self):
        return stat_tuple(self.cpp.stats()), stat_tuple(self.ref.stats())

    def pick(self, data, allow_dead=True):
        live = self.cpp.node_ids()
        pool = live + (self.dead[-3:] if allow_dead else [])
        return data.draw(st.sampled_from(pool)) if pool else None

    def draw_path(self, data):
        """(namespace, documents): a random path, or a cached one plus maybe one more document."""
        node = self.pick(data, allow_dead=False) if data.draw(st.booleans()) else None
        if node is None:
            return data.draw(namespaces), data.draw(paths)
        ns, path = self.path_of(node)
        extra = data.draw(st.sampled_from([None] + sorted(DOCS)))
        if extra is not None and extra not in path:
            path.append(extra)
        return ns, path

    def check_victims(self, before, evs):
        """Each victim was unlocked (nothing locked at or below it) and a leaf
        of its tier: its children resident there left earlier in this call."""
        left = set()
        for e in evs:
            info = before.get(e.node_id)
            if info is not None:  # nodes demoted into a tier during this call are new there
                assert not info["pinned"], f"locked node {e.node_id} was evicted"
                for child in info["children"]:
                    c = before[child]
                    if e.from_tier in c["tiers"]:
                        assert (child, e.from_tier) in left, "evicted a node with a child in that tier"
            left.add((e.node_id, e.from_tier))

    def path_of(self, node):
        """(namespace, documents root first) of a live node."""
        docs = []
        while node is not None:
            info = self.cpp.node(node)
            docs.insert(0, info.doc_id)
            node = info.parent
        return info.namespace, docs

    def walk(self, ns, path):
        """Ids of the cached prefix of a path, read without counting a lookup."""
        level = [i for i in self.cpp.node_ids()
                 if self.cpp.node(i).parent is None and self.cpp.node(i).namespace == ns]
        out = []
        for doc in path:
            node = next((i for i in level if self.cpp.node(i).doc_id == doc), None)
            if node is None:
                break
            out.append(node)
            level = self.cpp.node(node).children
        return out

    def view(self, tree=None):
        tree = tree or self.cpp
        infos = {i: tree.node(i) for i in tree.node_ids()}

        def pinned(i):
            return infos[i].lock_count > 0 or any(pinned(c) for c in infos[i].children)

        return {i: {"pinned": pinned(i), "children": n.children, "tiers": n.resident_tiers, "doc": n.doc_id,
                    "parent": n.parent, "locks": n.lock_count, "last_access": n.last_access,
                    "priorities": n.priorities}
                for i, n in infos.items()}

    @staticmethod
    def check_remove_order(before, doc, evs):
        """remove_document's events: the document's nodes in ascending id order, each
        subtree children first, each node's copies fastest first."""
        def owner(i):
            while before[i]["doc"] != doc:
                i = before[i]["parent"]
            return i

        owners = [owner(e.node_id) for e in evs]
        assert owners == sorted(owners), "document nodes not removed in ascending id order"
        dropped = Counter()
        for e in evs:
            info = before[e.node_id]
            for c in info["children"]:
                assert dropped[c] == len(before[c]["tiers"]), "a node was dropped before its children"
            assert e.from_tier == info["tiers"][dropped[e.node_id]], "copies not dropped fastest first"
            assert e.to_tier is None and not e.copied
            dropped[e.node_id] += 1
        assert all(dropped[i] == len(before[i]["tiers"]) for i in dropped)

    # -------------------------------------------------------------- rules
    @rule(data=st.data(), sized=st.booleans(), lock=st.booleans())
    def match(self, data, sized, lock):
        ns, path = self.draw_path(data)
        self.match_path(ns, path, sized, lock)

    def match_path(self, ns, path, sized, lock):
        tokens = [size_of(d)[0] for d in path] if sized else None
        locks = {i: self.cpp.node(i).lock_count for i in self.walk(ns, path)}
        mc, mr = self.same(lambda: self.cpp.match(ns, path, tokens, lock),
                           lambda: self.ref.match(ns, path, tokens, lock))
        assert self.ids(mc.node_ids) == mr.node_ids
        assert (mc.tiers, mc.tokens, mc.matched_docs, mc.matched_tokens) == \
               (mr.tiers, mr.tokens, mr.matched_docs, mr.matched_tokens)
        assert set(mc.node_ids) == set(locks)
        for i, count in locks.items():  # lock=True: every matched node locked exactly once more
            assert self.cpp.node(i).lock_count == count + lock
        if lock and mc.node_ids:
            note("match locked a path")

    @rule(data=st.data(), repeat=st.booleans())
    def peek(self, data, repeat):
        """peek answers like match but records nothing and locks nothing."""
        ns, path = self.draw_path(data)
        if repeat:  # a document twice: rejected like match rejects it
            path = path + [path[0]]
        self.peek_path(ns, path)

    def peek_path(self, ns, path):
        before = self.stats_both()
        view = self.view()
        pc, pr = self.same(lambda: self.cpp.peek(ns, path), lambda: self.ref.peek(ns, path))
        assert self.stats_both() == before
        assert self.view() == view
        if pc is not None:
            assert self.ids(pc.node_ids) == pr.node_ids
            assert (pc.tiers, pc.tokens, pc.matched_docs, pc.matched_tokens) == \
                   (pr.tiers, pr.tokens, pr.matched_docs, pr.matched_tokens)
            assert list(pc.node_ids) == self.walk(ns, path)

    @rule(ns=namespaces, path=paths, tier=st.sampled_from(TIERS), bad_size=st.booleans(), lock=st.booleans(),
          data=st.data())
    def insert(self, ns, path, tier, bad_size, lock, data):
        tokens = [size_of(d)[0] for d in path]
        nbytes = [size_of(d)[1] for d in path]
        if bad_size:  # a size that disagrees with an existing node, or just a different doc size
            tokens[data.draw(st.integers(0, len(path) - 1))] += 1
        before = self.view()
        rc, rr = self.same(lambda: self.cpp.insert(ns, path, tokens, nbytes, tier, lock),
                           lambda: self.ref.insert(ns, path, tokens, nbytes, tier, lock))
        if rc is not None:
            self.docs_used.update(path)
            self.check_victims(before, rc.evictions)
            self.compare_evictions(rc.evictions, rr.evictions)
            self.map_ids(rc.node_ids, rr.node_ids)
            assert rc.created == rr.created
            assert self.ids(rc.promoted) == rr.promoted
            assert list(rc.created) == [i not in before for i in rc.node_ids]
            # Every reused node ends in `tier` or faster, its parent never slower than it.
            for i in rc.node_ids:
                assert TIERS.index(self.cpp.node(i).tier) <= TIERS.index(tier)
                old = before[i]["locks"] if i in before else 0
                assert self.cpp.node(i).lock_count == old + lock  # the whole path, once
            if rc.promoted:
                note("insert promoted a slower prefix")
            if lock:
                note("insert locked a path" + (" it created" if any(rc.created) else ""))

    @rule(data=st.data(), tier=st.sampled_from(TIERS), extra=st.sampled_from(sorted(DOCS)), lock=st.booleans())
    def insert_below_cached(self, data, tier, extra, lock):
        """insert along a cached path (plus one document not on it): the reused prefix
        often sits in a slower tier than `tier`, so insert has to promote it."""
        node = self.pick(data, allow_dead=False)
        if node is None:
            return
        ns, path = self.path_of(node)
        if extra not in path:
            path.append(extra)
        self.insert(ns, path, tier, False, lock, data)

    @rule(data=st.data(), tier_index=st.integers(0, 2), over=st.sampled_from([0, 1, 1, 2, 500]),
          via_access=st.booleans())
    def oversized_insert(self, data, tier_index, over, via_access):
        """A request needing capacity + over bytes in its tier (promoted prefix plus new
        documents): over > 0 fails fast with nothing changed; over == 0 is the boundary."""
        ns, path = self.draw_path(data)
        self.sized_request(ns, path, self.tiers[tier_index % len(self.tiers)], over, via_access)

    def sized_request(self, ns, path, tier, over, via_access):
        cap = self.cpp.stats().capacity_bytes[tier]
        slower = lambda i: TIERS.index(self.cpp.node(i).tier) > TIERS.index(tier)  # noqa: E731
        prefix = self.walk(ns, path)
        need = sum(self.cpp.node(i).nbytes for i in prefix if slower(i)) + \
            sum(size_of(d)[1] for d in path[len(prefix):])
        if need < cap + over:  # one more new document brings the need to capacity + over
            extra = f"x{cap + over - need}"
            if extra in path or (len(prefix) == len(path) and self.walk(ns, path + [extra])[len(path):]):
                return
            path = path + [extra]
            need = cap + over
        # Sizes of the cached prefix as cached (an earlier insert may have used a bad size).
        tokens = [self.cpp.node(i).tokens for i in prefix] + [size_of(d)[0] for d in path[len(prefix):]]
        nbytes = [self.cpp.node(i).nbytes for i in prefix] + [size_of(d)[1] for d in path[len(prefix):]]
        before, view = self.stats_both(), self.view()
        if via_access:
            rc, rr = self.same(lambda: self.cpp.access(ns, path, tokens, nbytes, tier),
                               lambda: self.ref.access(ns, path, tokens, nbytes, tier))
        else:
            rc, rr = self.same(lambda: self.cpp.insert(ns, path, tokens, nbytes, tier),
                               lambda: self.ref.insert(ns, path, tokens, nbytes, tier))
        if need > cap:
            assert rc is None and rr is None, "an oversized request was not refused"
            message = rf"needs {need} bytes in tier '{tier}' but its capacity is {cap} bytes"
            for tree in (self.cpp, self.ref):  # refused up front, not after trying to make room
                with pytest.raises(CapacityError, match=message):
                    tree.insert(ns, path, tokens, nbytes, tier)
            # Fail-fast: nothing evicted and rolled back, no clock moved, no lookup counted.
            assert self.stats_both() == before
            assert self.view() == view
            note("oversized request refused")
        elif rc is not None:
            self.docs_used.update(path)
            self.compare_evictions(rc.evictions, rr.evictions)
            self.map_ids(rc.node_ids, rr.node_ids)
            assert list(rc.created) == list(rr.created)
            note("request of exactly the tier's capacity fitted")

    @rule(ns=namespaces, path=paths, tier=st.sampled_from(TIERS), lock=st.booleans())
    def access(self, ns, path, tier, lock):
        tokens = [size_of(d)[0] for d in path]
        nbytes = [size_of(d)[1] for d in path]
        before = self.view()
        rc, rr = self.same(lambda: self.cpp.access(ns, path, tokens, nbytes, tier, lock),
                           lambda: self.ref.access(ns, path, tokens, nbytes, tier, lock))
        if rc is not None:
            self.docs_used.update(path)
            self.check_victims(before, rc.evictions)
            self.compare_evictions(rc.evictions, rr.evictions)
            self.map_ids(rc.node_ids, rr.node_ids)
            assert (rc.created, rc.hit_tiers, rc.matched_docs, rc.matched_tokens) == \
                   (rr.created, rr.hit_tiers, rr.matched_docs, rr.matched_tokens)
            assert self.ids(rc.promoted) == rr.promoted

    @rule(data=st.data(), n=st.integers(1, 3))
    def lock(self, data, n):
        ids = [i for i in (self.pick(data) for _ in range(n)) if i is not None]
        self.same(lambda: self.cpp.lock(ids), lambda: self.ref.lock(self.ids(ids)))

    @rule(data=st.data(), n=st.integers(1, 2), valid=st.booleans())
    def unlock(self, data, n, valid):
        locked = [i for i in self.cpp.node_ids() if self.cpp.node(i).lock_count > 0]
        if valid and locked:
            ids = [data.draw(st.sampled_from(locked))]
        else:
            ids = [i for i in (self.pick(data) for _ in range(n)) if i is not None]
        self.same(lambda: self.cpp.unlock(ids), lambda: self.ref.unlock(self.ids(ids)))

    @rule(data=st.data())
    def touch(self, data):
        ids = [i for i in [self.pick(data)] if i is not None]
        self.same(lambda: self.cpp.touch(ids), lambda: self.ref.touch(self.ids(ids)))

    @rule(data=st.data(), cached=st.integers(-1, 5000), new=st.integers(0, 3000))
    def record_compute(self, data, cached, new):
        ids = [i for i in [self.pick(data)] if i is not None]
        self.same(lambda: self.cpp.record_compute(ids, cached, new),
                  lambda: self.ref.record_compute(self.ids(ids), cached, new))

    @rule(tier=st.sampled_from(TIERS), nbytes=st.integers(0, 1200))
    def evict(self, tier, nbytes):
        before = self.view()
        ec, er = self.same(lambda: self.cpp.evict(tier, nbytes), lambda: self.ref.evict(tier, nbytes))
        if ec is not None:
            assert sum(e.nbytes for e in ec if e.from_tier == tier) >= nbytes
            self.check_victims(before, ec)
            self.compare_evictions(ec, er)

    @rule(data=st.data(), tier=st.sampled_from(TIERS))
    def promote(self, data, tier):
        node = self.pick(data)
        ids = [] if node is None else [node]
        live = node is not None and node in self.cpp.node_ids()
        if live and data.draw(st.booleans()):  # the whole path, root first
            while self.cpp.node(ids[0]).parent is not None:
                ids.insert(0, self.cpp.node(ids[0]).parent)
        before = self.view()
        ec, er = self.same(lambda: self.cpp.promote(ids, tier), lambda: self.ref.promote(self.ids(ids), tier))
        if ec is not None:
            self.check_victims(before, ec)
            self.compare_evictions(ec, er)

    @rule(data=st.data())
    def remove(self, data):
        node = self.pick(data)
        if node is None:
            return
        ec, er = self.same(lambda: self.cpp.remove(node), lambda: self.ref.remove(self.to_ref.get(node, -1)))
        if ec is not None:
            self.compare_evictions(ec, er, ordered=False)

    @rule(data=st.data())
    def remove_document(self, data):
        # Mostly a document in use; sometimes one never inserted, or an empty name.
        doc = data.draw(st.one_of(st.sampled_from(sorted(self.docs_used) or ["a"]),
                                  st.sampled_from(["zz", "a", ""])))
        self.drop_document(doc)

    def drop_document(self, doc):
        before, before_ref = self.view(), self.view(self.ref)
        (_, _, _, ev0, clock0, *_), _ = self.stats_both()
        rc, rr = self.same(lambda: self.cpp.remove_document(doc), lambda: self.ref.remove_document(doc))
        if rc is None:
            return
        assert rc.kept_locked == rr.kept_locked
        self.check_remove_order(before, doc, rc.evictions)
        self.check_remove_order(before_ref, doc, rr.evictions)
        self.compare_evictions(rc.evictions, rr.evictions, ordered=False)
        s = self.cpp.stats()
        assert (s.evictions, s.clock) == (ev0, clock0)  # like remove(): no eviction counted
        # What remains of the document is exactly its pinned nodes, untouched.
        mine = [i for i, v in before.items() if v["doc"] == doc]
        kept = [i for i in self.cpp.node_ids() if self.cpp.node(i).doc_id == doc]
        assert kept == sorted(i for i in mine if before[i]["pinned"])
        assert rc.kept_locked == len(kept)
        if not mine:
            assert list(rc.evictions) == [] and rc.kept_locked == 0
        note("remove_document: " + ("unknown" if not mine else "kept locked" if kept else "dropped all"))

    @rule(tier=st.sampled_from(TIERS), nbytes=st.integers(-1, 1500))
    def set_capacity(self, tier, nbytes):
        ec, er = self.same(lambda: self.cpp.set_capacity(tier, nbytes), lambda: self.ref.set_capacity(tier, nbytes))
        if ec is not None:
            self.compare_evictions(ec, er)

    # --------------------------------------------------------- invariants
    @invariant()
    def agree(self):
        assert self.cpp.check_invariants() == []
        assert self.ref.check_invariants() == []
        assert list(self.cpp.tiers) == list(self.ref.tiers) == list(self.tiers)
        sc, sr = self.cpp.stats(), self.ref.stats()
        for field in ("num_nodes", "used_bytes", "capacity_bytes", "evictions", "clock", "lookups", "hits",
                      "hit_tokens", "lookup_tokens", "interned_names"):
            assert getattr(sc, field) == getattr(sr, field), field
        for field in ("used_bytes", "capacity_bytes", "evictions", "clock"):
            assert set(getattr(sc, field)) == set(self.tiers), field
        live = self.cpp.node_ids()
        assert sorted(self.ids(live)) == self.ref.node_ids()
        infos = {}
        for i in live:
            a, b = self.cpp.node(i), self.ref.node(self.to_ref[i])
            infos[i] = a
            assert (a.doc_id, a.namespace, a.tokens, a.nbytes, a.tier, a.resident_tiers, a.priorities,
                    a.lock_count, a.frequency, a.cost_samples, a.last_access) == \
                   (b.doc_id, b.namespace, b.tokens, b.nbytes, b.tier, b.resident_tiers, b.priorities,
                    b.lock_count, b.frequency, b.cost_samples, b.last_access)
            assert a.cost_per_token == b.cost_per_token
            assert (a.parent is None and b.parent is None) or self.to_ref[a.parent] == b.parent
            assert sorted(self.ids(a.children)) == b.children
        used = {t: 0 for t in self.tiers}
        for n in infos.values():
            for t in n.resident_tiers:
                used[t] += n.nbytes
            if n.parent is not None:  # parent in the same or a faster tier
                assert TIERS.index(infos[n.parent].tier) <= TIERS.index(n.tier)
        assert used == sc.used_bytes
        # Names held by live nodes: documents plus namespaces with a document.
        docs = Counter(n.doc_id for n in infos.values())
        assert sc.interned_names == len(docs) + len({n.namespace for n in infos.values()})
        for doc in sorted(self.docs_used) + ["zz"]:
            assert self.cpp.document_nodes(doc) == self.ref.document_nodes(doc) == docs[doc], doc


TreeVersusReference.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_tree_matches_reference = TreeVersusReference.TestCase


def test_the_state_machine_reaches_evictions_and_errors():
    """Guard against a vacuous run: one fixed sequence must evict, cascade and fail."""
    m = TreeVersusReference()
    m.build(policy="pgdsf", tiers=TIERS)
    for path in (["a", "b", "c"], ["d", "e"], ["c", "d", "e"], ["f", "e", "d"], ["b", "e", "a"]):
        m.access("m1", path, "gpu", False)
        m.agree()
    s = m.cpp.stats()
    assert s.evictions["gpu"] > 0 and s.evictions["host"] > 0
    # [a, b, c] was pushed down to host, host, remote: inserts below it promote the prefix.
    def tiers(path):
        return [m.cpp.node(i).tier for i in m.walk("m1", path)]

    assert tiers(["a", "b", "c"]) == ["host", "host", "remote"]
    m.insert("m1", ["a", "b", "c"], "host", False, False, None)  # promotes c into host
    assert tiers(["a", "b", "c"]) == ["host", "host", "host"]
    m.insert("m1", ["a", "b", "f"], "gpu", False, False, None)   # promotes a and b into gpu, adds f
    assert tiers(["a", "b", "f"]) == ["gpu", "gpu", "gpu"]
    m.agree()
    m.cpp.lock(m.cpp.node_ids())
    m.ref.lock(m.ids(m.cpp.node_ids()))
    with pytest.raises(CapacityError):
        m.cpp.insert("m2", ["e", "d"], [2048, 1000], [400, 300])
    with pytest.raises(CapacityError):
        m.ref.insert("m2", ["e", "d"], [2048, 1000], [400, 300])
    m.agree()


def test_the_new_rules_reach_subsets_locks_fail_fast_and_document_removal():
    """Guard for the newer rules: a {gpu, remote} tree demotes gpu into remote; insert and
    match lock atomically; an oversized request fails fast; remove_document keeps what is
    locked and drops the rest."""
    m = TreeVersusReference()
    m.build(policy="lru", tiers=("gpu", "remote"))
    assert m.cpp.stats().capacity_bytes == {"gpu": 700, "remote": 1300}
    m.insert("m1", ["a", "b", "c"], "gpu", False, True, None)          # 500 of 700 bytes, locked
    m.agree()
    assert m.cpp.stats().used_bytes["gpu"] == 500
    with pytest.raises(CapacityError):                                 # the locked path stays
        m.cpp.insert("m2", ["d"], [1000], [300])
    path = m.walk("m1", ["a", "b", "c"])
    m.cpp.unlock(path)
    m.ref.unlock(m.ids(path))
    m.insert("m2", ["d"], "gpu", False, False, None)                   # c: gpu -> remote
    m.agree()
    assert [m.cpp.node(i).tier for i in path] == ["gpu", "gpu", "remote"]
    lookups = m.cpp.stats().lookups
    m.peek_path("m1", ["a", "b", "c", "f"])
    m.match_path("m2", ["d", "a"], True, True)                         # locks d
    assert [m.cpp.node(i).lock_count for i in m.walk("m2", ["d"])] == [1]
    assert m.cpp.stats().lookups == lookups + 1
    m.agree()
    m.sized_request("m1", ["a", "b", "c"], "gpu", 1, False)            # promotes c, plus x451: 701 > 700
    m.sized_request("m1", ["a", "b", "c"], "gpu", 0, True)             # exactly 700, but d is locked
    m.agree()
    m.drop_document("d")                                               # locked: kept
    m.drop_document("c")                                               # unlocked: dropped
    m.drop_document("zz")                                              # unknown: nothing
    m.agree()
    assert sorted(m.cpp.node(i).doc_id for i in m.cpp.node_ids()) == ["a", "b", "d"]
    assert m.cpp.stats().interned_names == 3 + 2
    single = TreeVersusReference()
    single.build(policy="lfu", tiers=("host",))
    single.insert("m1", ["d", "e"], "host", False, False, None)
    single.insert("m1", ["c", "b", "f"], "host", False, False, None)   # one tier: evictions drop
    single.agree()
    assert single.cpp.stats().evictions == {"host": 1}                 # e was dropped, d stayed
    assert sorted(single.cpp.node(i).doc_id for i in single.cpp.node_ids()) == ["b", "c", "d", "f"]
    for tier in ("gpu", "remote"):
        with pytest.raises(ValueError, match=rf"'{tier}' is not configured \(this tree has: host\)"):
            single.cpp.insert("m1", ["a"], [64], [100], tier)
