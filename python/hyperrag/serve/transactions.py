"""The controller's cache transactions, coded against the CacheBackend protocol.

A job (one prefill of a document path) touches the cache in three steps, each
atomic inside the cache, so many jobs of many threads interleave safely:

1. lookup: the longest cached prefix of the path is matched and locked in one
   call; locked nodes are never evicted, so their KV stays readable.
2. load: hits in a slower tier are promoted (copied) to the insert tier when it
   has room, and their payloads read.
3. commit: the new documents are stored with the whole path locked in the same
   call, their compute recorded and the hits touched; then every lock of the job
   is released.

Segments are keyed by their content (hyperrag.cache.identity): a document id
whose content changed gets a new key, and the old key's nodes are dropped.

A shared tier (``remote``: a RedisKVStore or a directory, see
hyperrag.cache.shared_tier) sits behind the memory tiers: a lookup that stops
short brings the next segments that another process stored from there into
the slowest memory tier (then promoted like any slow hit), and every segment
a job creates is written there too (in the background for Redis). A shared
value that is damaged or a store that cannot answer is a miss, counted.

Admission ("what deserves a node"): "all" stores every new segment of a path;
"reused_prefix" stores a new document only when it follows the system prompt
directly or follows a segment this job reused, so a path grows by one document
each time its prefix proves useful instead of storing every deep path once.

Approximate reuse (``approximate``: an ApproximateReuse) looks each document up
on its own, as the path [system, document]: the node that holds its
position-independent form (hyperrag.engines.approximate_reuse), which is also
the exact KV of a prompt whose first document it is. A job then holds the
system node and every document node found, in prompt order but not
necessarily a prefix, and stores a form for each document it computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from hyperrag.cache import CapacityError, StorageError
from hyperrag.cache.shared_tier import SharedKVStore, extend_path
from hyperrag.engines.approximate_reuse import ApproximateReuse
from hyperrag.engines.base import DocumentKV, Engine, Prompt
from hyperrag.serve.popularity import DocumentPopularity

TIER_ORDER = ("gpu", "host", "remote")  # fastest first
ADMISSIONS = ("all", "reused_prefix")


@runtime_checkable
class CacheBackend(Protocol):
    """What the controller needs from a cache (hyperrag.cache.KVCache implements it).
    Every method must be safe to call from many threads."""

    tiers: Sequence[str]

    def match(self, namespace: str, doc_ids: Sequence[str], doc_tokens: Optional[Sequence[int]] = None,
              lock: bool = False) -> Any: ...

    def put(self, namespace: str, doc_ids: Sequence[str], doc_tokens: Sequence[int], doc_bytes: Sequence[int],
            payloads: Optional[Sequence[Any]] = None, tier: str = "gpu", lock: bool = False) -> Any: ...

    def get(self, node_id: int) -> Any: ...

    def promote(self, node_ids: Sequence[int], tier: str = "gpu") -> Any: ...

    def unlock(self, node_ids: Sequence[int]) -> None: ...

    def touch(self, node_ids: Sequence[int]) -> None: ...

    def record_compute(self, node_ids: Sequence[int], cached_tokens: int, new_tokens: int) -> None: ...

    def track_version(self, doc_id: str, key: str) -> int: ...

    def best_order(self, namespace: str, doc_ids: Sequence[str], fixed: int = 0) -> List[str]: ...

    def peek(self, namespace: str, doc_ids: Sequence[str]) -> Any: ...

    def node(self, node_id: int) -> Any: ...

    def stats(self) -> Any: ...


@dataclass
class Lookup:
    """The locked cached segments of a job's path: per matched segment its node id,
    fastest tier when matched, tokens and index in the prompt (a prefix 0..m-1 for
    exact reuse; any increasing subset for approximate reuse)."""

    node_ids: List[int] = field(default_factory=list)
    tiers: List[str] = field(default_factory=list)
    tokens: List[int] = field(default_factory=list)
    segments: List[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.segments:
            self.segments = list(range(len(self.node_ids)))

    def keep(self, entries: Sequence[int]) -> "Lookup":
        """The lookup restricted to the given entry positions."""
        return Lookup(*([xs[j] for j in entries] for xs in (self.node_ids, self.tiers, self.tokens, self.segments)))

    @property
    def matched_docs(self) -> int:
        return len(self.node_ids)

    @property
    def matched_tokens(self) -> int:
        return sum(self.tokens)


class CacheTransactions:
    """Lookup, load, commit and release of jobs' paths in one cache (None: no cache,
    every job computes everything). Stateless between calls apart from its
    configuration, so one instance serves every thread."""

    def __init__(self, cache: Optional[CacheBackend], engine: Engine, insert_tier: str, recorder,
                 admission: str = "all", remote: Optional[SharedKVStore] = None,
                 approximate: Optional[ApproximateReuse] = None):
        if approximate is not None and not getattr(engine, "approximates", False):
            raise ValueError(f"reuse='approximate' needs an engine that re-positions KV (the transformers engine); "
                             f"engine {engine.name!r} reuses exact prefixes only: use reuse='exact'")
        self.approximate = approximate
        if admission not in ADMISSIONS:
            raise ValueError(f"admission {admission!r} is unknown; allowed: {', '.join(ADMISSIONS)}")
        if remote is not None and not isinstance(remote, SharedKVStore):
            raise ValueError(f"remote must be a shared KV store (a RedisKVStore or DiskKVStore), "
                             f"got {type(remote).__name__}")
        self.admission = admission
        self.popularity = DocumentPopularity()
        if cache is not None and not isinstance(cache, CacheBackend):
            missing = [m for m in ("tiers", "match", "put", "get", "promote", "unlock", "touch", "record_compute",
                                   "track_version", "best_order", "peek", "node", "stats") if not hasattr(cache, m)]
            raise TypeError(f"cache must implement the CacheBackend protocol (e.g. a hyperrag.cache.KVCache); "
                            f"{type(cache).__name__} lacks {', '.join(missing)}")
        self.cache = cache
        self.engine = engine
        self.recorder = recorder
        self.uses_payloads = not getattr(engine, "accounts_only", False)
        if remote is not None and (cache is None or not self.uses_payloads):
            raise ValueError("remote needs a cache and an engine with real KV payloads (not the simulated engine)")
        self.remote = remote
        self.insert_tiers: Tuple[str, ...] = ()
        if cache is not None:
            present = list(cache.tiers)
            if insert_tier not in present:
                raise ValueError(f"insert_tier {insert_tier!r} is not a tier of the cache; allowed: "
                                 f"{', '.join(present)}")
            self.insert_tiers = tuple(present[present.index(insert_tier):])

    # --------------------------------------------------------------- identity
    def track(self, prompt: Prompt) -> None:
        """Record each document's content key; a document whose content changed since it
        was last served has its old nodes dropped (the system prompt is not tracked:
        several may be in use at once)."""
        self.popularity.observe(prompt.doc_ids)
        if self.cache is None:
            return
        keys = prompt.keys
        dropped = sum(self.cache.track_version(d, keys[i]) for i, d in enumerate(prompt.segment_ids)
                      if i >= prompt.fixed)
        if dropped:
            self.recorder.count("stale_nodes_removed", dropped)

    # ------------------------------------------------------------ transactions
    def best_order(self, namespace: str, prompt: Prompt) -> Prompt:
        """The prompt with its documents in the order whose cached prefix is longest (the
        fixed segments stay first), then the uncached documents most requested first, so
        that the paths this query stores are the ones later queries will share."""
        if self.cache is None:
            return prompt
        keys = list(prompt.keys)
        if self.approximate is not None:  # documents with a stored form first: the rest is computed as one run
            fixed = list(range(prompt.fixed))
            stored = [self.cache.peek(namespace, [keys[i] for i in fixed + [i]]).matched_docs == len(fixed) + 1
                      for i in range(len(keys))]
            rest = [i for i in range(prompt.fixed, len(keys)) if not stored[i]]
            ranked = self.popularity.ranked([prompt.segment_ids[i] for i in rest])
            return prompt.select(fixed + [i for i in range(prompt.fixed, len(keys)) if stored[i]]
                                 + [rest[i] for i in ranked])
        index = {k: i for i, k in enumerate(keys)}
        order = [index[k] for k in self.cache.best_order(namespace, keys, prompt.fixed)]
        cached = max(prompt.fixed, self.cache.peek(namespace, [keys[i] for i in order]).matched_docs)
        head, rest = order[:cached], order[cached:]
        ranked = self.popularity.ranked([prompt.segment_ids[i] for i in rest])
        return prompt.select(head + [rest[i] for i in ranked])

    def lookup(self, namespace: str, prompt: Prompt) -> Lookup:
        """Match and lock the cached prefix (one atomic cache call; counts one lookup), or
        with approximate reuse each document's form (one lookup per document)."""
        if self.cache is None:
            return Lookup()
        if self.approximate is not None:
            return self._lookup_forms(namespace, prompt)
        return self._exact_lookup(namespace, prompt)

    def _exact_lookup(self, namespace: str, prompt: Prompt) -> Lookup:
        keys, tokens = list(prompt.keys), [int(t) for t in prompt.segment_tokens]
        m = self.cache.match(namespace, keys, tokens, lock=True)
        lookup = Lookup(list(m.node_ids), list(m.tiers), [int(t) for t in m.tokens])
        if self.remote is not None and lookup.matched_docs < len(keys):
            lookup = self._from_remote(namespace, keys, tokens, lookup)
        return lookup

    def _lookup_forms(self, namespace: str, prompt: Prompt) -> Lookup:
        """Approximate reuse: the system prompt, then each document as the path [system,
        document], every match locked once (see the module docstring)."""
        fixed = prompt.fixed
        head = self._exact_lookup(namespace, prompt.select(range(fixed))) if fixed else Lookup()
        if head.matched_docs < fixed:
            self.release(head.node_ids)
            return Lookup()
        found = head
        for i in range(fixed, len(prompt.segment_ids)):
            one = self._exact_lookup(namespace, prompt.select(list(range(fixed)) + [i]))
            self.release(one.node_ids[:fixed])  # the system node stays locked by ``head``
            if one.matched_docs == fixed + 1:
                found = Lookup(found.node_ids + one.node_ids[fixed:], found.tiers + one.tiers[fixed:],
                               found.tokens + one.tokens[fixed:], found.segments + [i])
            else:
                self.release(one.node_ids[fixed:])
        return found

    def _from_remote(self, namespace: str, keys: List[str], tokens: List[int], lookup: Lookup) -> Lookup:
        """Extend the locked prefix with the segments the shared tier holds (one round trip)."""
        start = lookup.matched_docs
        try:
            entries = self.remote.get_many(namespace, [keys[:j + 1] for j in range(start, len(keys))])
        except StorageError:  # the store cannot answer: compute everything missing
            self.recorder.count("remote_errors")
            return lookup
        fetched = []

        def fetch(j):
            entry = entries[j - start]
            if isinstance(entry, StorageError):  # a damaged value: recompute from here
                self.recorder.count("remote_errors")
                return None
            if entry is not None:
                fetched.append(int(entry.nbytes))
            return entry

        try:
            held = extend_path(self.cache, namespace, keys, tokens, lookup.node_ids, fetch, self.insert_tiers[-1])
        except (CapacityError, StorageError):  # no room for them in memory: computed instead
            self.recorder.count("store_errors")
            return lookup
        if fetched:
            self.recorder.count("remote_hits", len(fetched))
            self.recorder.count("remote_hit_bytes", sum(fetched))
        new = held[start:]
        return Lookup(held, lookup.tiers + [self.cache.node(n).tier for n in new], tokens[:len(held)])

    def load(self, lookup: Lookup, doc_ids: Sequence[str]) -> Tuple[List[DocumentKV], int, Lookup]:
        """Promote slow hits to the insert tier (if it has room; else they are read
        from where they are) and read their KV. A hit whose bytes cannot be read ends
        the usable prefix there: it and the hits after it are unlocked and recomputed.
        Returns the cached KV, the bytes read from slower tiers, and the usable lookup."""
        if not lookup.node_ids:
            return [], 0, lookup
        tier = self.insert_tiers[0]
        slow = [nid for nid, t in zip(lookup.node_ids, lookup.tiers) if t != tier]
        if slow:
            try:
                self.cache.promote(slow, tier=tier)
            except (CapacityError, StorageError):  # tier full of locked KV, or the copy failed
                pass
        cached, slow_bytes, kept = [], 0, []
        for j, (nid, t, tokens, i) in enumerate(zip(lookup.node_ids, lookup.tiers, lookup.tokens, lookup.segments)):
            payload = None
            nbytes = self.engine.kv_bytes(tokens)
            if self.uses_payloads:
                try:
                    payload = self.cache.get(nid)
                except StorageError:
                    if self.approximate is None or j == 0:  # the rest hangs on this segment
                        self.release(lookup.node_ids[j:])
                        return cached, slow_bytes, lookup.keep(kept)
                    self.release([nid])  # a form stands alone: only it is recomputed
                    continue
                nbytes = int(payload.nbytes)
            if t != tier:
                slow_bytes += nbytes
            kept.append(j)
            cached.append(DocumentKV(doc_id=doc_ids[i], tokens=tokens, nbytes=nbytes, payload=payload))
        return cached, slow_bytes, lookup.keep(kept)

    def commit(self, namespace: str, prompt: Prompt, lookup: Lookup, new_kv: list, question_tokens: int) -> int:
        """Store the new segments the admission policy admits below the hits, record
        their compute, touch the hits. Returns how many document nodes were created. A store
        that fails for lack of room or memory stores nothing (counted); the query is
        still served."""
        if self.cache is None:
            return 0
        if self.approximate is not None:
            return self._commit_forms(namespace, prompt, lookup, new_kv, question_tokens)
        k = lookup.matched_docs
        end = len(prompt.segment_ids)
        if self.admission == "reused_prefix":  # one document past a reused prefix, or the first document
            end = min(end, max(k + 1, prompt.fixed + 1))
        stored_kv = list(new_kv)[: end - k]
        keys, tokens = list(prompt.keys[:end]), [int(t) for t in prompt.segment_tokens[:end]]
        # The hits' logical sizes as stored (the insert checks them), then the new segments'.
        nbytes = [int(self.cache.node(nid).nbytes) for nid in lookup.node_ids] + [int(kv.nbytes) for kv in stored_kv]
        payloads = [None] * k + [kv.payload for kv in stored_kv] if self.uses_payloads else None
        stored = self._put(namespace, keys, tokens, nbytes, payloads) if stored_kv else None
        created = []
        if stored is not None:
            created = [nid for nid, c in zip(stored.node_ids, stored.created) if c]
            if created:
                new_tokens = sum(prompt.segment_tokens[k:]) + int(question_tokens)
                self.cache.record_compute(created, lookup.matched_tokens, new_tokens)
        if lookup.node_ids:
            self.cache.touch(lookup.node_ids)
        if stored is not None:
            self.cache.unlock(list(stored.node_ids))
            self._share(namespace, keys, [j for j, c in enumerate(stored.created) if c], payloads)
        return sum(1 for i, c in enumerate(stored.created) if c and i >= prompt.fixed) if stored is not None else 0

    def _put(self, namespace: str, keys: List[str], tokens: List[int], nbytes: List[int], payloads):
        """Insert a path into the fastest tier with room, locked (None when nothing could be
        stored): a segment larger than the gpu tier, or a gpu tier full of locked KV, goes
        to host; with no room anywhere nothing is stored."""
        for tier in self.insert_tiers:
            try:
                return self.cache.put(namespace, keys, tokens, nbytes, payloads=payloads, tier=tier, lock=True)
            except CapacityError:
                continue
            except StorageError:
                self.recorder.count("store_errors")
                return None
        return None

    def _commit_forms(self, namespace: str, prompt: Prompt, lookup: Lookup, new_kv: list,
                      question_tokens: int) -> int:
        """Approximate reuse: store the form of every document computed (the path [system,
        document]; a computed system prompt with the first), touch the hits."""
        fixed = prompt.fixed
        missing = [i for i in range(len(prompt.segment_ids)) if i not in set(lookup.segments)]
        computed = dict(zip(missing, new_kv))
        keys, tokens = list(prompt.keys), [int(t) for t in prompt.segment_tokens]
        sizes = dict(zip(lookup.segments, (int(self.cache.node(n).nbytes) for n in lookup.node_ids)))
        sizes.update((i, int(kv.nbytes)) for i, kv in computed.items())
        created_docs, held = 0, []
        for i in missing:
            if i < fixed:
                continue
            path = list(range(fixed)) + [i]
            payloads = [computed[j].payload if j in computed else None for j in path] if self.uses_payloads else None
            stored = self._put(namespace, [keys[j] for j in path], [tokens[j] for j in path],
                               [sizes[j] for j in path], payloads)
            if stored is None:
                continue
            held += list(stored.node_ids)
            for j in range(fixed):  # the system prompt is in the tree now: later paths pass no payload for it
                computed.pop(j, None)
            new = [nid for nid, c in zip(stored.node_ids, stored.created) if c]
            if new:
                self.cache.record_compute(new, sum(tokens[:fixed]), tokens[i] + int(question_tokens))
                created_docs += int(stored.created[-1])
                self._share(namespace, [keys[j] for j in path], [n for n, c in enumerate(stored.created) if c],
                            payloads)
        if lookup.node_ids:
            self.cache.touch(lookup.node_ids)
        self.release(held)
        return created_docs

    def _share(self, namespace: str, keys: List[str], created: List[int], payloads) -> None:
        """Write the segments this job created to the shared tier (queued for Redis)."""
        if self.remote is None:
            return
        for j in created:
            try:
                self.remote.put(namespace, keys[:j + 1], payloads[j])
            except StorageError:
                self.recorder.count("remote_errors")

    def release(self, node_ids: Sequence[int]) -> None:
        if node_ids and self.cache is not None:
            self.cache.unlock(list(node_ids))
