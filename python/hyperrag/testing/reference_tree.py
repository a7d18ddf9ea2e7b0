"""A pure-Python knowledge tree with the semantics of the native one.

A test oracle, not serving code: ``hyperrag.cache`` never imports it.
Same API, policies and results as ``hyperrag.cache.KnowledgeTree`` (node ids
are plain counters here, so they differ). It is the oracle of the stateful
test and the baseline of bench/bench_tree.py, so it favours being obviously
correct over being fast: candidacy is recomputed from the children, victims
come from a lazy heap whose entries are checked against the node on use, and
an operation that may fail records the prior state of what it touches and
restores it on failure. Not thread-safe.

The semantics, shared with the C++ core:
- The configured tiers are any non-empty subset of gpu, host, remote, fastest
  first; "the next tier" of a tier is the next slower *configured* one (with
  {gpu, remote}, gpu demotes to remote). Internally tiers are indices into
  ``self.tiers``, so t + 1 is that next tier.
- A node is one document after the exact documents above it; it is resident
  in a set of tiers, its ``tier`` is the fastest, and a parent's tier is never
  slower than its child's.
- Candidates of tier t: unlocked nodes (no lock on them or below them)
  resident in t with no child resident in t. The victim is the candidate with
  the lowest (priority, last access tick).
- Evicting from t the node's fastest copy demotes it to t + 1 (copying only
  if t + 1 holds no copy yet: swap-out-only-once; room is made there first,
  which may cascade); any other copy, or a copy in the last tier, is dropped.
  clock[t] rises to the victim's priority.
- Priorities are set when a node is accessed (insert, touch, record_compute,
  promote) and when it enters a tier, from that tier's clock at that time.
- insert promotes reused prefix nodes resident only in a slower tier into its
  tier, in the same transaction as the room-making for the new documents.
- insert, access and promote fail fast: when the bytes a call needs in its
  tier (promoted nodes plus new documents) exceed that tier's capacity, they
  raise CapacityError before evicting anything.
- remove_document drops every node of a document (any namespace, any depth)
  with its subtree, except pinned ones, which it keeps and counts.
"""
from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from hyperrag.cache.tree import CapacityError, UnknownNodeError

TIERS = ("gpu", "host", "remote")
POLICIES = ("pgdsf", "gdsf", "lru", "lfu")

__all__ = ["ReferenceCostProfile", "ReferenceTree", "Eviction", "Match", "InsertResult",
           "AccessResult", "RemoveResult", "NodeInfo", "TreeStats", "TIERS", "POLICIES"]


def _locate(grid: List[float], x: float, extrapolate_above: bool):
    """Segment i and weight w with value = v[i] + w * (v[i+1] - v[i])."""
    if len(grid) == 1 or x <= grid[0]:
        return 0, 0.0
    if x >= grid[-1]:
        i = len(grid) - 2
        return i, ((x - grid[i]) / (grid[i + 1] - grid[i]) if extrapolate_above else 1.0)
    i = bisect_right(grid, x) - 1
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])


class ReferenceCostProfile:
    """Prefill seconds T(cached, new) on a grid, interpolated like the native CostProfile."""

    def __init__(self, cached_tokens: Sequence[float], new_tokens: Sequence[float],
                 seconds: Sequence[Sequence[float]]):
        self.cached_tokens = [float(x) for x in cached_tokens]
        self.new_tokens = [float(x) for x in new_tokens]
        self.table = [[float(x) for x in row] for row in seconds]
        for name, grid in (("cached_tokens", self.cached_tokens), ("new_tokens", self.new_tokens)):
            if not grid or any(b <= a for a, b in zip(grid, grid[1:])):
                raise ValueError(f"CostProfile: {name} must be non-empty and strictly increasing")
        if self.cached_tokens[0] < 0 or self.new_tokens[0] <= 0:
            raise ValueError("CostProfile: cached_tokens must be >= 0 and new_tokens > 0")
        if len(self.table) != len(self.cached_tokens) or any(len(r) != len(self.new_tokens) for r in self.table):
            raise ValueError("CostProfile: seconds must have shape [len(cached_tokens)][len(new_tokens)]")
        if any(not (0.0 <= x < float("inf")) for row in self.table for x in row):
            raise ValueError("CostProfile: seconds must be finite and >= 0")

    def seconds(self, cached_tokens: float, new_tokens: float) -> float:
        i, wc = _locate(self.cached_tokens, cached_tokens, False)
        j, wn = _locate(self.new_tokens, new_tokens, True)

        def row(r: int) -> float:
            v = self.table[r]
            return v[0] if len(self.new_tokens) == 1 else v[j] + wn * (v[j + 1] - v[j])

        a = row(i)
        value = a if len(self.cached_tokens) == 1 else a + wc * (row(i + 1) - a)
        return max(value, 0.0)

    def cost_per_token(self, cached_tokens: float, new_tokens: float) -> float:
        if not new_tokens > 0:
            raise ValueError("CostProfile.cost_per_token: new_tokens must be > 0")
        return self.seconds(cached_tokens, new_tokens) / new_tokens


@dataclass(frozen=True)
class Eviction:
    node_id: int
    from_tier: str
    to_tier: Optional[str]
    copied: bool
    nbytes: int


@dataclass
class Match:
    node_ids: List[int]
    tiers: List[str]
    tokens: List[int]
    matched_docs: int
    matched_tokens: int


@dataclass
class InsertResult:
    node_ids: List[int]
    created: List[bool]
    promoted: List[int]
    evictions: List[Eviction]


@dataclass
class AccessResult:
    node_ids: List[int]
    created: List[bool]
    hit_tiers: List[str]
    matched_docs: int
    matched_tokens: int
    promoted: List[int]
    evictions: List[Eviction]


@dataclass
class RemoveResult:
    evictions: List[Eviction]
    kept_locked: int


@dataclass
class NodeInfo:
    node_id: int
    doc_id: str
    namespace: str
    parent: Optional[int]
    tokens: int
    nbytes: int
    tier: str
    resident_tiers: List[str]
    priorities: List[float]
    lock_count: int
    frequency: int
    priority: float
    cost_per_token: float
    cost_samples: int
    last_access: int
    children: List[int]


@dataclass
class TreeStats:
    num_nodes: int
    used_bytes: Dict[str, int]
    capacity_bytes: Dict[str, int]
    evictions: Dict[str, int]
    clock: Dict[str, float]
    lookups: int
    hits: int
    hit_tokens: int
    lookup_tokens: int
    interned_names: int


class _Node:
    __slots__ = ("id", "ns", "doc", "parent", "children", "tokens", "nbytes", "resident", "prio",
                 "lock_count", "pins", "frequency", "tick", "cost_sum", "cost_samples", "dropped", "root")

    def __init__(self, node_id, ns, doc, parent, tokens, nbytes, root=False):
        self.id, self.ns, self.doc, self.parent = node_id, ns, doc, parent
        self.children: Dict[str, _Node] = {}
        self.tokens, self.nbytes = tokens, nbytes
        self.resident: set = set()
        self.prio: Dict[int, float] = {}
        self.lock_count = 0
        self.pins = 0               # locks on this node and below it
        self.frequency = 0
        self.tick = 0
        self.cost_sum = 0.0
        self.cost_samples = 0
        self.dropped = False
        self.root = root


@dataclass
class _Journal:
    saved: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    used: list = field(default_factory=list)
    clock: list = field(default_factory=list)
    evictions: list = field(default_factory=list)
    tick: int = 0


class ReferenceTree:
    """Pure-Python ``KnowledgeTree``: same methods, arguments, results and errors."""

    def __init__(self, capacities: Dict[str, int], policy: str = "pgdsf", profile=None):
        if not isinstance(capacities, dict) or not capacities:
            raise ValueError("capacities: must be a non-empty dict (tiers: any of gpu, host, remote)")
        for name, nbytes in capacities.items():
            if name not in TIERS:
                raise ValueError(f"capacities: unknown tier {name!r} (allowed: gpu, host, remote)")
            if nbytes <= 0:
                raise ValueError(f"capacities[{name!r}]: must be > 0 bytes (got {nbytes})")
        if policy not in POLICIES:
            raise ValueError(f"policy: unknown name {policy!r} (allowed: {', '.join(POLICIES)})")
        if policy == "pgdsf" and profile is None:
            raise ValueError("policy 'pgdsf' needs a CostProfile (profile=...)")
        self.tiers = [t for t in TIERS if t in capacities]  # fastest first
        self.policy = policy
        self.profile = profile
        n = len(self.tiers)
        self._cap = [int(capacities[t]) for t in self.tiers]
        self._used = [0] * n
        self._clock = [0.0] * n
        self._evictions = [0] * n
        self._heaps: List[list] = [[] for _ in range(n)]
        self._roots: Dict[str, _Node] = {}
        self._nodes: Dict[int, _Node] = {}
        self._next_id = 1
        self._tick = 0
        self._lookups = self._hits = self._hit_tokens = self._lookup_tokens = 0
        self._journal: Optional[_Journal] = None
        self._fail = (0, 0)

    # ------------------------------------------------------------ validation
    def _tier(self, name: str, op: str) -> int:
        if name not in TIERS:
            raise ValueError(f"tier: unknown tier {name!r} (allowed: gpu, host, remote)")
        if name not in self.tiers:
            raise ValueError(f"{op}: tier {name!r} is not configured (this tree has: {', '.join(self.tiers)})")
        return self.tiers.index(name)

    @staticmethod
    def _check_docs(op, ns, docs):
        if not ns:
            raise ValueError(f"{op}: namespace must be a non-empty string")
        if not docs:
            raise ValueError(f"{op}: doc_ids must not be empty")
        for i, d in enumerate(docs):
            if not d:
                raise ValueError(f"{op}: doc_ids[{i}] is an empty string")
        if len(set(docs)) != len(docs):
            raise ValueError(f"{op}: doc_ids has a document more than once (a path holds each document once)")

    @staticmethod
    def _check_sizes(op, name, n, values):
        if len(values) != n:
            raise ValueError(f"{op}: {name} has {len(values)} entries but doc_ids has {n}")
        for i, v in enumerate(values):
            if v <= 0:
                raise ValueError(f"{op}: {name}[{i}] must be > 0 (got {v})")

    def _resolve(self, node_id: int, op: str) -> _Node:
        n = self._nodes.get(node_id)
        if n is None or n.dropped:
            raise UnknownNodeError(f"{op}: unknown node id {node_id}")
        return n

    def _walk(self, ns: str, docs) -> List[_Node]:
        path, cur = [], self._roots.get(ns)
        for d in docs:
            cur = cur.children.get(d) if cur is not None else None
            if cur is None:
                break
            path.append(cur)
        return path

    @staticmethod
    def _check_prefix(op, prefix, tokens, nbytes):
        for i, n in enumerate(prefix):
            if n.tokens != tokens[i] or n.nbytes != nbytes[i]:
                raise ValueError(f"{op}: document {n.doc!r} is cached with {n.tokens} tokens / {n.nbytes} bytes "
                                 f"but doc_tokens[{i}]={tokens[i]}, doc_bytes[{i}]={nbytes[i]}")

    # --------------------------------------------------------- bookkeeping
    def _priority(self, n: _Node, t: int) -> float:
        clock = self._clock[t]
        if self.policy == "pgdsf":
            return clock + n.frequency * (n.cost_sum / n.cost_samples if n.cost_samples else 0.0)
        if self.policy == "gdsf":
            tokens = float(n.tokens)
            per_token = self.profile.seconds(0.0, tokens) / tokens if self.profile is not None else 1.0 / tokens
            return clock + n.frequency * per_token
        if self.policy == "lru":
            return float(n.tick)
        return float(n.frequency)

    def _candidate(self, n: _Node, t: int) -> bool:
        return (not n.root and not n.dropped and t in n.resident and n.pins == 0
                and not any(t in c.resident for c in n.children.values()))

    def _sync(self, n: _Node) -> None:
        for t in range(len(self.tiers)):
            if self._candidate(n, t):
                heapq.heappush(self._heaps[t], (n.prio[t], n.tick, n.id))

    def _victim(self, t: int) -> Optional[_Node]:
        heap = self._heaps[t]
        while heap:
            prio, tick, node_id = heap[0]
            n = self._nodes.get(node_id)
            if n is not None and self._candidate(n, t) and n.prio[t] == prio and n.tick == tick:
                return n
            heapq.heappop(heap)
        return None

    def _save(self, n: _Node) -> None:
        j = self._journal
        if j is not None and n.id not in j.saved:
            j.saved[n.id] = (n, set(n.resident), dict(n.prio), n.tick, n.frequency, n.dropped)

    def _refresh(self, n: _Node) -> None:
        self._save(n)
        self._tick += 1
        n.tick = self._tick
        for t in n.resident:
            n.prio[t] = self._priority(n, t)
        self._sync(n)

    def _pin(self, n: _Node, delta: int) -> None:
        while not n.root:
            n.pins += delta
            if n.pins == 0:
                self._sync(n)
            n = n.parent

    def _add_resident(self, n: _Node, t: int) -> None:
        self._save(n)
        n.resident.add(t)
        self._used[t] += n.nbytes
        n.prio[t] = self._priority(n, t)
        self._sync(n)

    def _remove_resident(self, n: _Node, t: int) -> None:
        self._save(n)
        n.resident.discard(t)
        n.prio.pop(t)
        self._used[t] -= n.nbytes
        if not n.resident:
            n.dropped = True
            if self._journal is not None:
                self._journal.dropped.append(n)
            else:
                self._delete(n)
        self._sync(n.parent)

    def _delete(self, n: _Node) -> None:
        del n.parent.children[n.doc]
        del self._nodes[n.id]

    def _make_room(self, t: int, need: int, evs: list) -> bool:
        while self._cap[t] - self._used[t] < need:
            v = self._victim(t)
            if v is None:
                self._fail = (t, need)
                return False
            if not self._evict_one(v, t, evs):
                return False
        return True

    def _evict_one(self, v: _Node, t: int, evs: list) -> bool:
        self._clock[t] = max(self._clock[t], v.prio[t])
        self._evictions[t] += 1
        if min(v.resident) == t and t + 1 < len(self.tiers):
            nxt = t + 1
            copied = nxt not in v.resident
            if copied:
                if not self._make_room(nxt, v.nbytes, evs):
                    return False
                self._add_resident(v, nxt)
            self._remove_resident(v, t)
            evs.append(Eviction(v.id, self.tiers[t], self.tiers[nxt], copied, v.nbytes))
        else:
            self._remove_resident(v, t)
            evs.append(Eviction(v.id, self.tiers[t], None, False, v.nbytes))
        return True

    def _promote_into(self, order: List[_Node], t: int, evs: list) -> bool:
        """Inside an open transaction: make room in t for `order` (nodes slower than t,
        parents first, pinned by the caller) and make each resident there as an access."""
        if not order:
            return True
        if not self._make_room(t, sum(n.nbytes for n in order), evs):
            return False
        for n in order:
            self._add_resident(n, t)
            self._refresh(n)
        return True

    def _begin(self) -> None:
        self._journal = _Journal(used=list(self._used), clock=list(self._clock),
                                 evictions=list(self._evictions), tick=self._tick)

    def _commit(self) -> None:
        j, self._journal = self._journal, None
        for n in j.dropped:
            self._delete(n)

    def _rollback(self) -> None:
        j, self._journal = self._journal, None
        for n, resident, prio, tick, frequency, dropped in j.saved.values():
            n.resident, n.prio, n.tick, n.frequency, n.dropped = resident, prio, tick, frequency, dropped
        self._used, self._clock, self._evictions, self._tick = j.used, j.clock, j.evictions, j.tick
        for n, *_ in j.saved.values():
            self._sync(n)
            self._sync(n.parent)

    def _capacity_error(self, op: str) -> CapacityError:
        t, need = self._fail
        return CapacityError(f"{op}: cannot make room for {need} bytes in tier {self.tiers[t]!r} "
                             f"(capacity {self._cap[t]} bytes, {self._used[t]} in use): what is left there "
                             "is locked or an ancestor of a locked node")

    def _fail_fast(self, op: str, t: int, need: int) -> None:
        """Before any eviction: a call needing more than the tier's capacity cannot succeed."""
        if need > self._cap[t]:
            raise CapacityError(f"{op}: needs {need} bytes in tier {self.tiers[t]!r} but its capacity is "
                                f"{self._cap[t]} bytes: a document larger than its tier can never be cached there")

    def _lock_nodes(self, nodes) -> None:
        for n in nodes:
            n.lock_count += 1
            self._pin(n, +1)

    def _create(self, ns, docs, tokens, nbytes, prefix, t) -> List[_Node]:
        parent = prefix[-1] if prefix else self._roots.setdefault(ns, _Node(0, ns, "", None, 0, 0, root=True))
        created = []
        for i in range(len(prefix), len(docs)):
            n = _Node(self._next_id, ns, docs[i], parent, tokens[i], nbytes[i])
            self._next_id += 1
            parent.children[docs[i]] = n
            self._nodes[n.id] = n
            self._add_resident(n, t)
            self._refresh(n)
            created.append(n)
            parent = n
        return created

    def _insert_path(self, op, ns, docs, tokens, nbytes, prefix, t):
        """insert() after validation: promote the prefix nodes slower than t and make room
        for the new documents in one transaction, then create them.
        Returns (InsertResult, created nodes)."""
        slow = [n for n in prefix if min(n.resident) > t]  # a suffix: parents are never slower
        new_bytes = sum(nbytes[len(prefix):])
        self._fail_fast(op, t, sum(n.nbytes for n in slow) + new_bytes)
        evs: list = []
        created: list = []
        if slow or new_bytes:
            # The reused prefix must survive the room-making for itself and its new children.
            if prefix:
                self._pin(prefix[-1], +1)
            self._begin()
            if not (self._promote_into(slow, t, evs) and (not new_bytes or self._make_room(t, new_bytes, evs))):
                self._rollback()
                if prefix:
                    self._pin(prefix[-1], -1)
                raise self._capacity_error(op)
            self._commit()
            if prefix:
                self._pin(prefix[-1], -1)
            created = self._create(ns, docs, tokens, nbytes, prefix, t)
        result = InsertResult([n.id for n in prefix + created], [False] * len(prefix) + [True] * len(created),
                              [n.id for n in slow], evs)
        return result, created

    def _record_lookup(self, prefix, lookup_tokens: int) -> None:
        self._lookups += 1
        self._lookup_tokens += lookup_tokens
        if prefix:
            self._hits += 1
            self._hit_tokens += sum(n.tokens for n in prefix)

    def _computed(self, nodes, cached_tokens: int, new_tokens: int) -> None:
        sample = self.profile.cost_per_token(cached_tokens, new_tokens) if self.profile is not None else 0.0
        for n in nodes:
            if self.profile is not None:
                n.cost_sum += sample
                n.cost_samples += 1
            n.frequency += 1
            self._refresh(n)

    # ------------------------------------------------------------ public API
    def _match_result(self, path: List[_Node]) -> Match:
        return Match([n.id for n in path], [self.tiers[min(n.resident)] for n in path],
                     [n.tokens for n in path], len(path), sum(n.tokens for n in path))

    def match(self, namespace: str, doc_ids, doc_tokens=None, lock: bool = False) -> Match:
        """Longest cached prefix; counts one lookup. lock=True locks each matched node once."""
        self._check_docs("match", namespace, doc_ids)
        if doc_tokens is not None:
            self._check_sizes("match", "doc_tokens", len(doc_ids), doc_tokens)
        path = self._walk(namespace, doc_ids)
        self._record_lookup(path, sum(doc_tokens) if doc_tokens is not None else 0)
        if lock:
            self._lock_nodes(path)
        return self._match_result(path)

    def peek(self, namespace: str, doc_ids) -> Match:
        """What match would return, recording nothing and locking nothing."""
        self._check_docs("peek", namespace, doc_ids)
        return self._match_result(self._walk(namespace, doc_ids))

    def best_order(self, namespace: str, doc_ids, fixed: int = 0) -> List[str]:
        """The order whose cached prefix holds the most tokens (the native search, unbounded)."""
        self._check_docs("best_order", namespace, doc_ids)
        docs = list(doc_ids)
        if not 0 <= fixed <= len(docs):
            raise ValueError(f"best_order: fixed={fixed} exceeds len(doc_ids)={len(docs)}")
        head = self._walk(namespace, docs[:fixed])
        if len(head) < fixed:
            return docs
        start = head[-1] if fixed else self._roots.get(namespace)
        if start is None:
            return docs
        best = (0, [])

        def search(node, path, tokens):
            nonlocal best
            if tokens > best[0]:
                best = (tokens, list(path))
            for j in range(fixed, len(docs)):
                child = node.children.get(docs[j])
                if j not in path and child is not None:
                    search(child, path + [j], tokens + child.tokens)

        search(start, [], 0)
        chosen = best[1]
        return docs[:fixed] + [docs[j] for j in chosen] + [d for j, d in enumerate(docs[fixed:], fixed)
                                                           if j not in chosen]

    def insert(self, namespace: str, doc_ids, doc_tokens, doc_bytes, tier: str = "gpu",
               lock: bool = False) -> InsertResult:
        if tier not in TIERS:
            self._tier(tier, "insert")
        self._check_docs("insert", namespace, doc_ids)
        self._check_sizes("insert", "doc_tokens", len(doc_ids), doc_tokens)
        self._check_sizes("insert", "doc_bytes", len(doc_ids), doc_bytes)
        t = self._tier(tier, "insert")
        prefix = self._walk(namespace, doc_ids)
        self._check_prefix("insert", prefix, doc_tokens, doc_bytes)
        result, created = self._insert_path("insert", namespace, doc_ids, doc_tokens, doc_bytes, prefix, t)
        if lock:  # the whole path, reused and created, before anyone else can evict it
            self._lock_nodes(prefix + created)
        return result

    def lock(self, node_ids) -> None:
        self._lock_nodes([self._resolve(i, "lock") for i in node_ids])

    def unlock(self, node_ids) -> None:
        nodes = [self._resolve(i, "unlock") for i in node_ids]
        for node_id, count in Counter(node_ids).items():
            if self._nodes[node_id].lock_count < count:
                raise ValueError(f"unlock: node {node_id} is not locked (or locked fewer than {count} times)")
        for n in nodes:
            n.lock_count -= 1
            self._pin(n, -1)

    def touch(self, node_ids) -> None:
        for n in [self._resolve(i, "touch") for i in node_ids]:
            n.frequency += 1
            self._refresh(n)

    def record_compute(self, node_ids, cached_tokens: int, new_tokens: int) -> None:
        if cached_tokens < 0:
            raise ValueError(f"record_compute: cached_tokens must be >= 0 (got {cached_tokens})")
        if new_tokens <= 0:
            raise ValueError(f"record_compute: new_tokens must be > 0 (got {new_tokens})")
        self._computed([self._resolve(i, "record_compute") for i in node_ids], cached_tokens, new_tokens)

    def evict(self, tier: str, nbytes: int) -> List[Eviction]:
        if tier not in TIERS:
            self._tier(tier, "evict")
        if nbytes <= 0:
            raise ValueError(f"evict: nbytes must be > 0 (got {nbytes})")
        t = self._tier(tier, "evict")
        evs: list = []
        freed = 0
        self._begin()
        while freed < nbytes:
            v = self._victim(t)
            if v is None:
                self._fail = (t, nbytes)
                ok = False
            else:
                freed += v.nbytes
                ok = self._evict_one(v, t, evs)
            if not ok:
                self._rollback()
                raise self._capacity_error("evict")
        self._commit()
        return evs

    def promote(self, node_ids, tier: str = "gpu") -> List[Eviction]:
        t = self._tier(tier, "promote")
        order: List[_Node] = []
        for n in [self._resolve(i, "promote") for i in node_ids]:
            if min(n.resident) <= t or n in order:
                continue
            p = n.parent
            if not p.root and min(p.resident) > t and p not in order:
                raise ValueError(f"promote: node {n.id} (document {n.doc!r}) has its parent in "
                                 f"{self.tiers[min(p.resident)]!r}, slower than {tier!r}: list its ancestors before it")
            order.append(n)
        evs: list = []
        if not order:
            return evs
        self._fail_fast("promote", t, sum(n.nbytes for n in order))
        for n in order:
            self._pin(n, +1)
        self._begin()
        ok = self._promote_into(order, t, evs)
        if ok:
            self._commit()
        else:
            self._rollback()
        for n in order:
            self._pin(n, -1)
        if not ok:
            raise self._capacity_error("promote")
        return evs

    def remove(self, node_id: int) -> List[Eviction]:
        n = self._resolve(node_id, "remove")
        if n.pins:
            raise ValueError(f"remove: node {node_id} (document {n.doc!r}) or a node below it is locked")
        evs: list = []
        self._drop_subtree(n, evs)
        return evs

    def _drop_subtree(self, x: _Node, evs: list) -> None:
        """Post-order (children first), each node's copies fastest first."""
        for c in list(x.children.values()):
            self._drop_subtree(c, evs)
        for t in sorted(x.resident):
            evs.append(Eviction(x.id, self.tiers[t], None, False, x.nbytes))
            self._remove_resident(x, t)

    def remove_document(self, doc_id: str) -> RemoveResult:
        """Drop every node of document doc_id (any namespace, any depth) with its subtree,
        in ascending node-id order; a pinned one (locked, or with a lock below it) is kept
        whole and counted in kept_locked. Eviction counters and clocks are unchanged."""
        if not doc_id:
            raise ValueError("remove_document: doc_id must be a non-empty string")
        evs: list = []
        kept = 0
        # A path holds a document once, so no node of doc_id lies below another one.
        for n in sorted((n for n in self._nodes.values() if n.doc == doc_id), key=lambda n: n.id):
            if n.pins:
                kept += 1
            else:
                self._drop_subtree(n, evs)
        return RemoveResult(evs, kept)

    def document_nodes(self, doc_id: str) -> int:
        """How many nodes hold this document (0 when none)."""
        return sum(1 for n in self._nodes.values() if n.doc == doc_id)

    def set_capacity(self, tier: str, nbytes: int) -> List[Eviction]:
        if tier not in TIERS:
            self._tier(tier, "set_capacity")
        if nbytes <= 0:
            raise ValueError(f"set_capacity: nbytes must be > 0 (got {nbytes})")
        t = self._tier(tier, "set_capacity")
        old, self._cap[t] = self._cap[t], nbytes
        evs: list = []
        self._begin()
        if not self._make_room(t, 0, evs):
            self._rollback()
            self._cap[t] = old
            raise self._capacity_error("set_capacity")
        self._commit()
        return evs

    def access(self, namespace: str, doc_ids, doc_tokens, doc_bytes, tier: str = "gpu",
               lock: bool = False) -> AccessResult:
        """match, insert (promoting slow hits), touch hits, record compute, [lock]."""
        if tier not in TIERS:
            self._tier(tier, "access")
        self._check_docs("access", namespace, doc_ids)
        self._check_sizes("access", "doc_tokens", len(doc_ids), doc_tokens)
        self._check_sizes("access", "doc_bytes", len(doc_ids), doc_bytes)
        t = self._tier(tier, "access")
        prefix = self._walk(namespace, doc_ids)
        self._check_prefix("access", prefix, doc_tokens, doc_bytes)
        hit_tiers = [self.tiers[min(n.resident)] for n in prefix]
        ins, created = self._insert_path("access", namespace, doc_ids, doc_tokens, doc_bytes, prefix, t)
        for n in prefix:
            n.frequency += 1
            self._refresh(n)
        matched_tokens = sum(n.tokens for n in prefix)
        if created:
            self._computed(created, matched_tokens, sum(doc_tokens[len(prefix):]))
        if lock:
            self._lock_nodes(prefix + created)
        self._record_lookup(prefix, sum(doc_tokens))
        return AccessResult(ins.node_ids, ins.created, hit_tiers, len(prefix), matched_tokens, ins.promoted,
                            ins.evictions)

    def node(self, node_id: int) -> NodeInfo:
        n = self._resolve(node_id, "node")
        tiers = sorted(n.resident)
        return NodeInfo(
            node_id=n.id, doc_id=n.doc, namespace=n.ns, parent=None if n.parent.root else n.parent.id,
            tokens=n.tokens, nbytes=n.nbytes, tier=self.tiers[tiers[0]],
            resident_tiers=[self.tiers[t] for t in tiers], priorities=[n.prio[t] for t in tiers],
            lock_count=n.lock_count, frequency=n.frequency, priority=n.prio[tiers[0]],
            cost_per_token=n.cost_sum / n.cost_samples if n.cost_samples else 0.0,
            cost_samples=n.cost_samples, last_access=n.tick, children=sorted(c.id for c in n.children.values()))

    def node_ids(self) -> List[int]:
        return sorted(self._nodes)

    def stats(self) -> TreeStats:
        def per_tier(values):
            return dict(zip(self.tiers, values))
        live = self._nodes.values()
        interned = len({n.doc for n in live}) + len({n.ns for n in live})
        return TreeStats(len(self._nodes), per_tier(self._used), per_tier(self._cap), per_tier(self._evictions),
                         per_tier(self._clock), self._lookups, self._hits, self._hit_tokens, self._lookup_tokens,
                         interned)

    def check_invariants(self) -> List[str]:
        bad = []
        used = [0] * len(self.tiers)
        for n in self._nodes.values():
            for t in n.resident:
                used[t] += n.nbytes
            if not n.resident:
                bad.append(f"node {n.id}: resident nowhere")
            elif not n.parent.root and min(n.parent.resident) > min(n.resident):
                bad.append(f"node {n.id}: parent is in a slower tier")
        for t, name in enumerate(self.tiers):
            if used[t] != self._used[t]:
                bad.append(f"used bytes of {name}: {self._used[t]} != {used[t]}")
            if self._used[t] > self._cap[t]:
                bad.append(f"used bytes of {name} exceed its capacity")
        return bad
