"""SegmentStore: the segment KV an engine loads and saves by content path, in one process.

A KVCache (tree, tiers, block pools) backed by optional layers that other
processes share (a directory, a Redis server): a path of segment keys (system
prompt, documents; see hyperrag.cache.identity) names a node, and a node found
only in a shared layer is brought into memory when a request takes it.
Engines that own their forward pass (the vLLM connector, the reranker) use it
to answer "how many leading segments are cached", to hold those nodes while
their KV is copied out, and to store new segments. Thread-safe: the KVCache
is, and the store's own maps are locked.

Compression is chosen per storage layer: ``codecs={"memory": ..., "disk": ...,
"remote": ...}`` (hyperrag.cache.kv_codec: "raw" or "int8"). The memory codec
applies to every tier of the KVCache, because the native tree accounts one
size per node whatever tier holds it; the others to their shared layer.
Readers always get raw payloads back (``read``), so engines never see the
difference.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from .disk_store import DiskKVStore
from .kv_cache import KVCache, StorageError
from .kv_codec import Codec, CodecError, KVShape, RawCodec, make_codec
from .shared_tier import SharedKVStore, extend_path
from .tree import CapacityError, UnknownNodeError


@dataclass
class SegmentStats:
    lookups: int = 0            # requests asked about
    hit_segments: int = 0       # segments taken by requests (memory or a shared layer)
    hit_tokens: int = 0
    disk_hits: int = 0          # segments brought in from the directory
    remote_hits: int = 0        # segments brought in from the remote store (Redis)
    loaded_bytes: int = 0       # KV bytes read out for requests
    saved_segments: int = 0
    saved_bytes: int = 0        # bytes the memory tiers took for them (after the memory codec)
    saved_disk_bytes: int = 0   # bytes written to the directory (after the disk codec)
    failures: int = 0           # loads that failed (the engine recomputed), saves refused or not completed
    by_tier: Dict[str, int] = field(default_factory=dict)  # segments taken, by the tier they were in

    def as_dict(self) -> dict:
        return {**self.__dict__, "by_tier": dict(self.by_tier)}

    def counters(self) -> Dict[str, int]:
        """Flat counters (by_tier as hit_segments_<tier>), for metrics systems."""
        out = {k: v for k, v in self.__dict__.items() if k != "by_tier"}
        out.update({f"hit_segments_{tier}": n for tier, n in self.by_tier.items()})
        return out


LAYERS = ("memory", "disk", "remote")  # the memory tiers, then the shared layers in lookup order
RAW = RawCodec()


class SegmentStore:
    """Segment KV by content path: memory tiers (``capacities``, as KVCache, or an existing
    ``cache`` such as a controller's, so both share one tree) plus optional layers shared
    with other processes: a ``directory`` and a ``remote`` SharedKVStore (e.g. a
    RedisKVStore), looked up in that order. ``kv_shape`` is needed by any codec other
    than raw."""

    def __init__(self, capacities: Optional[Mapping[str, int]] = None, directory=None, policy: str = "gdsf",
                 block_bytes: int = 64 << 10, *, cache: Optional[KVCache] = None,
                 codecs: Optional[Mapping[str, object]] = None, kv_shape: Optional[KVShape] = None,
                 remote: Optional[SharedKVStore] = None):
        if (capacities is None) == (cache is None):
            raise ValueError("give exactly one of capacities (a new KVCache) and cache (an existing one)")
        codecs = dict(codecs or {})
        unknown = sorted(set(codecs) - set(LAYERS))
        if unknown:
            raise ValueError(f"codecs has unknown layer(s) {unknown}; allowed: {list(LAYERS)}")
        self.codecs: Dict[str, Codec] = {layer: make_codec(codecs.get(layer)) for layer in LAYERS}
        if kv_shape is None and any(not isinstance(c, RawCodec) for c in self.codecs.values()):
            raise ValueError("kv_shape is required when a codec other than 'raw' is used")
        self.kv_shape = kv_shape
        self.cache = cache if cache is not None else KVCache(capacities, policy=policy, block_bytes=block_bytes)
        if remote is not None and not isinstance(remote, SharedKVStore):
            raise ValueError(f"remote must be a shared KV store (e.g. a RedisKVStore), got {type(remote).__name__}")
        self.shared: Dict[str, SharedKVStore] = {}
        if directory is not None:
            self.shared["disk"] = DiskKVStore(directory)
        if remote is not None:
            self.shared["remote"] = remote
        self._stats = SegmentStats()
        self._held: Dict[str, List[int]] = {}
        self._lock = threading.Lock()

    def stats(self) -> SegmentStats:
        """A consistent copy of the store's counters."""
        with self._lock:
            return SegmentStats(**self._stats.as_dict())

    def cached_prefix(self, namespace: str, keys: Sequence[str]) -> int:
        """How many leading segments are available (memory, then the shared layers); records nothing."""
        n = self.cache.peek(namespace, list(keys)).matched_docs
        while n < len(keys) and any(self._contains(layer, namespace, keys[:n + 1]) for layer in self.shared):
            n += 1
        return n

    def _contains(self, layer: str, namespace: str, keys) -> bool:
        try:
            return self.shared[layer].contains(self._shared_namespace(layer, namespace), keys)
        except StorageError:  # unreachable: not available
            return False

    def acquire(self, request_id: str, namespace: str, keys: Sequence[str], tokens: Sequence[int]) -> List[int]:
        """Bring the path into memory (from the shared layers where needed) and hold its nodes for the
        request (locked until ``release``). Returns the node ids held, root first; fewer
        than the keys when part of the path vanished or could not be read."""
        keys = list(keys)
        with self._lock:
            self._stats.lookups += 1
        held = list(self.cache.match(namespace, keys, list(tokens), lock=True).node_ids)
        if len(held) < len(keys) and self.shared:
            held = self._from_shared(namespace, keys, list(tokens), held)
        with self._lock:
            self._held.setdefault(request_id, []).extend(held)
            self._stats.hit_segments += len(held)
            self._stats.hit_tokens += sum(tokens[:len(held)])
            for nid in held:
                tier = self.cache.node(nid).tier
                self._stats.by_tier[tier] = self._stats.by_tier.get(tier, 0) + 1
        return held

    def _from_shared(self, namespace, keys, tokens, held) -> List[int]:
        """Extend the held path with nodes read from the shared layers (locked as they are
        stored): each layer is asked once for every segment still missing."""
        found: Dict[int, tuple] = {}  # path index -> (layer, payload in the memory codec)
        for layer, store in self.shared.items():
            need = [j for j in range(len(held), len(keys)) if j not in found]
            if not need:
                break
            try:
                entries = store.get_many(self._shared_namespace(layer, namespace), [keys[:j + 1] for j in need])
            except StorageError:  # the store cannot answer: try the next one
                self._failed()
                continue
            for j, entry in zip(need, entries):
                if isinstance(entry, StorageError):  # damaged: refused, never served
                    self._failed()
                elif entry is not None:
                    try:
                        found[j] = (layer, self._recode(entry, layer, "memory"))
                    except CodecError:
                        self._failed()
        used = []

        def fetch(j):
            if j not in found:
                return None
            used.append(found[j][0])
            return found[j][1]

        try:
            extended = extend_path(self.cache, namespace, keys, tokens, held, fetch, self.cache.tiers[0])
        except (CapacityError, StorageError):
            self._failed()
            return held
        with self._lock:
            for layer in used:
                setattr(self._stats, f"{layer}_hits", getattr(self._stats, f"{layer}_hits") + 1)
        return extended

    def _shared_namespace(self, layer: str, namespace: str) -> str:
        """Shared blobs are filed under their codec too, so a store reading them with
        another codec finds nothing (a miss) instead of bytes it would misread."""
        codec = self.codecs[layer]
        return namespace if isinstance(codec, RawCodec) else f"{namespace}@{codec.name}"

    def _recode(self, payload, source: str, target: str):
        """A payload written by layer ``source``'s codec ("raw": the engine's), in ``target``'s."""
        codec = lambda layer: RAW if layer == "raw" else self.codecs[layer]  # noqa: E731
        if payload is None or codec(source).name == codec(target).name:
            return payload
        return codec(target).encode(codec(source).decode(payload, self.kv_shape), self.kv_shape)

    def read(self, node_id: int):
        """A held node's raw payload (uint8, the engine's layout); StorageError/UnknownNodeError
        when it cannot be read, CodecError when its bytes are not a valid compressed payload."""
        stored = self.cache.get(node_id)
        with self._lock:
            self._stats.loaded_bytes += int(stored.nbytes)
        return self.codecs["memory"].decode(stored, self.kv_shape)

    def save(self, namespace: str, keys: Sequence[str], tokens: Sequence[int],
             payloads: Mapping[int, object]) -> int:
        """Store the segments ``payloads`` gives (path index -> raw payload) below the rest of
        the path, which must already be cached (a node is never stored with bytes it does not
        hold). Returns how many nodes were created; each is also written to the shared layers."""
        keys, tokens = list(keys), [int(t) for t in tokens]
        raw = payloads
        try:
            payloads = {j: self._recode(p, "raw", "memory") for j, p in raw.items()}
        except CodecError:
            self._failed()
            return 0
        end = max(payloads) + 1
        have = self.cache.peek(namespace, keys[:end]).matched_docs
        missing = [j for j in range(have, end) if j not in payloads]
        if missing:  # a segment before the new ones is neither cached nor given: nothing valid to store
            self._failed()
            return 0
        prefix = self.cache.peek(namespace, keys[:have]).node_ids if have else []
        sizes = [int(self.cache.node(n).nbytes) for n in prefix]
        sizes += [int(memoryview(payloads[j]).nbytes) for j in range(have, end)]
        try:
            r = self.cache.put(namespace, keys[:end], tokens[:end], sizes,
                               payloads=[None] * have + [payloads[j] for j in range(have, end)],
                               tier=self.cache.tiers[0])
        except (CapacityError, StorageError, ValueError):
            self._failed()
            return 0
        created = [j for j, c in enumerate(r.created) if c]
        with self._lock:
            self._stats.saved_segments += len(created)
            self._stats.saved_bytes += sum(sizes[j] for j in created)
        for layer, store in self.shared.items():
            same_codec = self.codecs[layer].name == self.codecs["memory"].name
            for j in range(have, end):
                try:  # encoded once per codec: a layer with the memory codec takes the memory payload
                    blob = payloads[j] if same_codec else self._recode(raw[j], "raw", layer)
                    written = store.put(self._shared_namespace(layer, namespace), keys[:j + 1], blob)
                except (StorageError, CodecError):  # the shared copy is lost; the memory copy serves this process
                    self._failed()
                    continue
                if written and layer == "disk":
                    with self._lock:
                        self._stats.saved_disk_bytes += int(memoryview(blob).nbytes)
        return len(created)

    def release(self, request_id: str) -> None:
        """Drop the request's holds (idempotent)."""
        with self._lock:
            held = self._held.pop(request_id, [])
        if held:
            try:
                self.cache.unlock(held)
            except UnknownNodeError:  # cannot happen while held; tolerate a lost node
                pass

    def count_failure(self) -> None:
        """Count a load or save the engine could not complete (it recomputed, or did not cache)."""
        self._failed()

    def _failed(self) -> None:
        with self._lock:
            self._stats.failures += 1


_stores: Dict[tuple, SegmentStore] = {}
_stores_lock = threading.Lock()


def shared_store(capacities: Mapping[str, int], directory: Optional[str] = None, policy: str = "gdsf") -> SegmentStore:
    """The process's store for this configuration: every connector instance of the
    process (scheduler and worker side) gets the same one."""
    key = (tuple(sorted(capacities.items())), str(directory), policy)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = SegmentStore(capacities, directory, policy)
        return store
