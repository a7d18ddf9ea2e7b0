"""A shared tier behind the memory tiers: stores other processes read and write.

DiskKVStore (a directory) and RedisKVStore (a Redis server) both implement
``SharedKVStore``: payloads by namespace and content path, the same identity
as the tree's keys, so every process finds what any process stored.
``extend_path`` brings the next nodes of a held path from such a store into a
KVCache; the SegmentStore (vLLM connector, reranker) and the serving
controller's transactions both use it.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Protocol, Sequence, runtime_checkable

from .kv_cache import KVCache


@runtime_checkable
class SharedKVStore(Protocol):
    """Payloads shared by processes. ``get`` returns None for a miss and raises
    StorageError (BlobError, RemoteError) for a value that must not be used or a store
    that cannot answer. Thread-safe."""

    def contains(self, namespace: str, keys: Sequence[str]) -> bool: ...

    def get(self, namespace: str, keys: Sequence[str]): ...

    def get_many(self, namespace: str, paths: Sequence[Sequence[str]]) -> list:
        """Each path's payload, None, or the StorageError that refused it (one round trip
        where the store can); raises StorageError when the store cannot answer at all."""

    def put(self, namespace: str, keys: Sequence[str], payload) -> bool: ...


def extend_path(cache: KVCache, namespace: str, keys: Sequence[str], tokens: Sequence[int], held: List[int],
                fetch: Callable[[int], Optional[object]], tier: str) -> List[int]:
    """Extend a locked path (``held``: node ids of keys[:len(held)]) with the nodes whose
    payloads ``fetch(j)`` returns for j = len(held), ... (None stops), stored in ``tier``
    and locked. Returns the node ids now held, root first: ``held`` itself when nothing
    was fetched. CapacityError / StorageError propagate with ``held`` still locked."""
    payloads = []
    for j in range(len(held), len(keys)):
        payload = fetch(j)
        if payload is None:
            break
        payloads.append(payload)
    if not payloads:
        return held
    end = len(held) + len(payloads)
    sizes = [int(cache.node(n).nbytes) for n in held] + [int(memoryview(p).nbytes) for p in payloads]
    stored = cache.put(namespace, list(keys[:end]), [int(t) for t in tokens[:end]], sizes,
                       payloads=[None] * len(held) + payloads, tier=tier, lock=True)
    if held:
        cache.unlock(held)  # the put locked the whole path again
    return list(stored.node_ids)
