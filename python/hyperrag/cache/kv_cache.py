"""KVCache: the knowledge tree's metadata joined to real KV bytes.

Every tier of the tree gets its own block storage (BlockPool segments grown on
demand); every eviction event the tree reports is applied to those pools,
copying through the TransferEngine when the tree says bytes must move.

Each call that changes the tree is a transaction across tree and pools:
whatever bytes the call needs in its target tier (the payloads of documents it
creates, copies of reused nodes it promotes) are allocated and written
*before* the tree changes, so a failed allocation or copy leaves both as they
were. A demotion the tree decides during the call can still fail to copy;
then that node is dropped from the tree instead (it is a cache: losing an
entry is safe, serving bytes it does not hold is not) and counted in
``storage_stats()["errors"]``.

Thread-safe: one lock around each call that moves bytes, so the pools never
disagree with the tree. Calls that only read or lock tree metadata go straight
to the (thread-safe) tree.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .._core import BlockPool, CapacityError, DevicePool, TransferEngine, UnknownNodeError, cuda_device_count
from .tree import KnowledgeTree

TIER_ORDER = ("gpu", "host", "remote")
# A tier's storage grows in segments of at most this many bytes, as nodes arrive.
SEGMENT_BYTES = 256 << 20


class StorageError(RuntimeError):
    """KV bytes could not be allocated, copied or read. The call that raised it
    changed nothing in the tree or the pools (or dropped only the nodes whose
    bytes it lost); a reader should recompute instead."""


def filler_payload(namespace: str, doc_path: Sequence[Any], nbytes: int) -> np.ndarray:
    """Deterministic stand-in KV bytes of the node reached by `doc_path` in `namespace`.

    Different nodes get different bytes, so a test can tell whether a block came back
    from the right place after moves between tiers.
    """
    h = hashlib.blake2b(digest_size=64)
    for part in (namespace, *doc_path):
        s = str(part).encode()
        h.update(len(s).to_bytes(8, "little") + s)  # length-prefixed: no separator collisions
    digest = np.frombuffer(h.digest(), dtype=np.uint8)
    return np.tile(digest, -(-nbytes // digest.size))[:nbytes]  # np.resize's result, 20x faster


def _payload_nbytes(obj: Any, field_name: str) -> int:
    """Size of a payload, checking up front what BlockPool.write would reject later."""
    if hasattr(obj, "data_ptr") and hasattr(obj, "is_contiguous"):  # torch.Tensor
        if obj.device.type != "cpu":
            raise ValueError(f"{field_name} is a tensor on device '{obj.device.type}'; KVCache.put needs CPU memory")
        if not obj.is_contiguous():
            raise ValueError(f"{field_name} must be a contiguous tensor (call .contiguous())")
        return obj.numel() * obj.element_size()
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{field_name} must be a numpy array, a bytes-like object or a torch tensor, got {type(obj).__name__}"
        ) from None
    if not view.contiguous:
        raise ValueError(f"{field_name} must be contiguous")
    return view.nbytes


def _byte_view(obj: Any) -> np.ndarray:
    """A flat uint8 view of a contiguous payload or output buffer (no copy), so a
    node spanning several segments is read or written run by run."""
    if hasattr(obj, "data_ptr") and hasattr(obj, "numpy"):  # CPU torch tensor
        import torch

        return obj.detach().reshape(-1).view(torch.uint8).numpy()
    return np.frombuffer(memoryview(obj).cast("B"), dtype=np.uint8)


@dataclass
class _Blocks:
    """A node's bytes in one tier: `nbytes` laid out over `runs` of block ids, run
    after run (a node may span segments)."""

    runs: List[Tuple[BlockPool, List[int]]]
    nbytes: int

    @property
    def ids(self) -> List[int]:
        return [i for _, ids in self.runs for i in ids]

    def addresses(self) -> List[int]:
        return [pool.address(i) for pool, ids in self.runs for i in ids]


class _TierStore:
    """Blocks of one tier, in BlockPool segments added as nodes need them.

    Segments are never released while the cache lives; their total stays within
    the tier's capacity / storage_scale, plus each node's rounding up to whole
    blocks, plus one request's bytes staged before its evictions free room.
    Callers hold the KVCache lock.
    """

    def __init__(self, capacity_bytes: int, block_bytes: int, storage_scale: int, pinned):
        self.block_bytes = block_bytes
        self.pinned = pinned
        stored = max(1, capacity_bytes // storage_scale)
        self.segment_blocks = max(1, min(math.ceil(stored / block_bytes), SEGMENT_BYTES // block_bytes))
        self.pools: List[BlockPool] = []

    def allocate(self, nbytes: int) -> _Blocks:
        need = -(-nbytes // self.block_bytes)
        free = sum(p.free_blocks for p in self.pools)
        while free < need:
            try:
                pool = BlockPool(self.block_bytes, max(self.segment_blocks, need - free), self.pinned)
            except MemoryError as e:
                raise StorageError(f"cannot allocate {nbytes} bytes of KV storage: {e}") from e
            self.pools.append(pool)
            free += pool.num_blocks
        runs = []
        for pool in self.pools:
            take = min(need, pool.free_blocks)
            if take:
                runs.append((pool, pool.allocate(take)))
                need -= take
            if not need:
                break
        return _Blocks(runs, nbytes)

    @staticmethod
    def free(blocks: _Blocks) -> None:
        for pool, ids in blocks.runs:
            pool.free(ids)

    def write(self, blocks: _Blocks, data: Any) -> None:
        flat = _byte_view(data)
        for pool, ids, part in self._parts(blocks):
            pool.write(ids, flat[part])

    def read(self, blocks: _Blocks, out: Any) -> None:
        flat = _byte_view(out)
        for pool, ids, part in self._parts(blocks):
            pool.read(ids, flat[part])

    def _parts(self, blocks: _Blocks):
        """(pool, block ids, byte slice of the payload) per run, in order."""
        offset = 0
        for pool, ids in blocks.runs:
            n = min(len(ids) * self.block_bytes, blocks.nbytes - offset)
            yield pool, ids, slice(offset, offset + n)
            offset += n

    def stats(self) -> dict:
        used = sum(p.used_blocks for p in self.pools)
        total = sum(p.num_blocks for p in self.pools)
        return {
            "segments": len(self.pools),
            "blocks_total": total,
            "blocks_used": used,
            "bytes_used": used * self.block_bytes,
            "pinned": self.pools[0].pinned if self.pools else bool(self.pinned),
            "device": False,
        }


class _DeviceTierStore(_TierStore):
    """The gpu tier in GPU memory: one DevicePool that cudaMallocs segments as nodes
    arrive. Its budget is twice the tier's stored capacity, because a request's bytes
    are staged before its evictions free room; rounding each node up to whole blocks
    counts against it, so past the budget allocation fails as StorageError."""

    def __init__(self, capacity_bytes: int, block_bytes: int, storage_scale: int):
        self.block_bytes = block_bytes
        blocks = math.ceil(max(1, capacity_bytes // storage_scale) / block_bytes)
        segment = max(1, min(blocks, SEGMENT_BYTES // block_bytes))
        self.pools = [DevicePool(block_bytes, 2 * blocks, segment)]

    def allocate(self, nbytes: int) -> _Blocks:
        pool = self.pools[0]
        try:
            return _Blocks([(pool, pool.allocate(-(-nbytes // self.block_bytes)))], nbytes)
        except MemoryError as e:
            raise StorageError(f"cannot allocate {nbytes} bytes of KV storage on the GPU: {e}") from e

    def stats(self) -> dict:
        pool = self.pools[0]
        return {
            "segments": pool.segments,
            "blocks_total": pool.num_blocks,
            "blocks_used": pool.used_blocks,
            "bytes_used": pool.used_bytes,
            "pinned": False,
            "device": True,
        }


@dataclass
class _Staged:
    """Bytes written before a tree call: copies for nodes it will promote (by node
    id) and payloads of documents it will create (by path index)."""

    promoted: Dict[int, _Blocks] = field(default_factory=dict)
    created: Dict[int, _Blocks] = field(default_factory=dict)

    def all(self) -> List[_Blocks]:
        return [*self.promoted.values(), *self.created.values()]


def _path_changes(result):
    """What an insert/access result changed: evictions, promoted ids, created (index, id)."""
    created = [(i, nid) for i, (nid, c) in enumerate(zip(result.node_ids, result.created)) if c]
    return result.evictions, list(result.promoted), created


def _host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class KVCache:
    """Knowledge tree + one block store per tier + a TransferEngine (docs/cache_api.md).

    capacities / policy / profile go to the tree (any non-empty subset of gpu,
    host, remote). Pools hold logical bytes divided by `storage_scale` (a node of
    doc_bytes stores doc_bytes // storage_scale bytes), so a simulated multi-GiB
    budget moves real but small blocks. The "gpu" tier is GPU memory (a
    DevicePool) only when a CUDA device exists and the engine's backend is cuda;
    otherwise it is host memory like the others (`gpu_on_device` says which).
    gpu_device=None picks that automatically, True requires a device
    (RuntimeError otherwise), False keeps the gpu tier in host memory. Capacities
    whose host-memory tiers exceed this machine's memory are refused. `tree_cls`
    may name another class with the KnowledgeTree API (e.g. the pure-Python
    reference tree).
    """

    def __init__(
        self,
        capacities: Mapping[str, int],
        policy: str = "pgdsf",
        profile: Any = None,
        block_bytes: int = 64 << 10,
        storage_scale: int = 1,
        transfer_threads: int = 2,
        backend: str = "auto",
        pinned: bool | None = None,
        tree_cls: type | None = None,
        gpu_device: bool | None = None,
    ):
        for name, value in (("block_bytes", block_bytes), ("storage_scale", storage_scale)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(capacities, Mapping):
            raise TypeError(f"capacities must be a dict of tier name -> bytes, got {type(capacities).__name__}")
        self.tree = (tree_cls or KnowledgeTree)(capacities=dict(capacities), policy=policy, profile=profile)
        self.storage_scale = storage_scale
        self.block_bytes = block_bytes
        self.tiers = [t for t in TIER_ORDER if t in capacities]
        self.engine = TransferEngine(threads=transfer_threads, backend=backend)
        self.gpu_on_device = self._gpu_on_device(gpu_device)
        self._check_memory(capacities)
        self._stores = {
            t: _DeviceTierStore(int(capacities[t]), block_bytes, storage_scale) if t == "gpu" and self.gpu_on_device
            else _TierStore(int(capacities[t]), block_bytes, storage_scale, pinned)
            for t in self.tiers
        }
        self._blocks: Dict[int, Dict[str, _Blocks]] = {}  # node id -> tier -> blocks
        self._lost: set = set()   # nodes whose bytes a failed demotion lost, still to be dropped
        self._errors = 0          # nodes dropped because their bytes could not be moved
        self._versions: Dict[str, str] = {}  # document id -> key of the content last tracked
        self._versions_pruned_at = 0
        self._lock = threading.RLock()

    def _gpu_on_device(self, gpu_device: bool | None) -> bool:
        """Whether the gpu tier lives in GPU memory: it needs a device, and the cuda
        engine, since only that one can copy to and from device addresses."""
        if gpu_device is not None and not isinstance(gpu_device, bool):
            raise TypeError(f"gpu_device must be None (auto), True or False, got {type(gpu_device).__name__}")
        possible = "gpu" in self.tiers and cuda_device_count() > 0 and self.engine.backend == "cuda"
        if gpu_device and not possible:
            why = ("there is no gpu tier" if "gpu" not in self.tiers else
                   "no CUDA device is available" if cuda_device_count() == 0 else
                   f"the transfer engine's backend is {self.engine.backend!r}, not 'cuda'")
            raise RuntimeError(f"gpu_device=True: {why}")
        return possible if gpu_device is None else gpu_device

    def _check_memory(self, capacities: Mapping[str, int]) -> None:
        """Refuse host-memory capacities this machine could never hold, naming each tier."""
        have = _host_memory_bytes()
        stored = {t: int(capacities[t]) // self.storage_scale for t in self.tiers
                  if not (t == "gpu" and self.gpu_on_device)}
        if have is not None and sum(stored.values()) > have:
            parts = ", ".join(f"{t}={n} bytes" for t, n in stored.items())
            raise ValueError(
                f"capacities need {sum(stored.values())} bytes of host memory ({parts}, after storage_scale="
                f"{self.storage_scale}) but this machine has {have}; lower the capacities or raise storage_scale")

    # --- tree pass-through -------------------------------------------------------
    def match(self, namespace: str, doc_ids: Sequence[Any], doc_tokens: Sequence[int] | None = None,
              lock: bool = False):
        return self.tree.match(namespace, doc_ids, doc_tokens, lock=lock)

    def peek(self, namespace: str, doc_ids: Sequence[Any]):
        return self.tree.peek(namespace, doc_ids)

    def best_order(self, namespace: str, doc_ids: Sequence[Any], fixed: int = 0):
        return self.tree.best_order(namespace, doc_ids, fixed)

    def lock(self, node_ids: Sequence[int]) -> None:
        self.tree.lock(node_ids)

    def unlock(self, node_ids: Sequence[int]) -> None:
        self.tree.unlock(node_ids)

    def touch(self, node_ids: Sequence[int]) -> None:
        self.tree.touch(node_ids)

    def record_compute(self, node_ids: Sequence[int], cached_tokens: int, new_tokens: int) -> None:
        self.tree.record_compute(node_ids, cached_tokens, new_tokens)

    def node(self, node_id: int):
        return self.tree.node(node_id)

    def stats(self):
        return self.tree.stats()

    # --- operations that move bytes ---------------------------------------------
    def put(
        self,
        namespace: str,
        doc_ids: Sequence[Any],
        doc_tokens: Sequence[int],
        doc_bytes: Sequence[int],
        payloads: Sequence[Any] | None = None,
        tier: str = "gpu",
        lock: bool = False,
    ):
        """Insert the path and store each new node's payload in `tier`.

        Reused nodes only in a slower tier are promoted by the insert; their bytes
        are copied into `tier`. payloads[i] (or a filler when payloads or payloads[i]
        is None) must hold exactly doc_bytes[i] // storage_scale bytes; it is only
        read for nodes the insert creates. lock=True locks the whole path in the
        same tree call. All payloads are checked, and all bytes the call needs in
        `tier` written, before the tree changes: StorageError then means nothing
        changed.
        """
        self._check_tier(tier)
        self._check_payloads(doc_ids, doc_bytes, payloads)
        with self._lock:
            staged = self._stage_path(namespace, doc_ids, doc_bytes, payloads, tier)
            return self._transact(
                lambda: self.tree.insert(namespace, doc_ids, doc_tokens, doc_bytes, tier=tier, lock=lock),
                staged, tier, _path_changes)

    def access(
        self,
        namespace: str,
        doc_ids: Sequence[Any],
        doc_tokens: Sequence[int],
        doc_bytes: Sequence[int],
        payloads: Sequence[Any] | None = None,
        tier: str = "gpu",
        lock: bool = False,
    ):
        """KnowledgeTree.access (match, insert with slow hits promoted into `tier`,
        touch, record compute, optionally lock) with the bytes moved as in put()."""
        self._check_tier(tier)
        self._check_payloads(doc_ids, doc_bytes, payloads)
        with self._lock:
            staged = self._stage_path(namespace, doc_ids, doc_bytes, payloads, tier)
            return self._transact(
                lambda: self.tree.access(namespace, doc_ids, doc_tokens, doc_bytes, tier=tier, lock=lock),
                staged, tier, _path_changes)

    def promote(self, node_ids: Sequence[int], tier: str = "gpu"):
        """Make nodes resident in `tier` like KnowledgeTree.promote, moving their bytes."""
        self._check_tier(tier)
        with self._lock:
            level = self.tiers.index(tier)
            slow = [nid for nid in dict.fromkeys(node_ids)
                    if self.tiers.index(self.tree.node(nid).tier) > level]
            staged = _Staged()
            if self._fits(tier, sum(self.tree.node(n).nbytes for n in slow)):
                staged.promoted = self._stage_copies(slow, tier)
            # On success every node slower than `tier` is now resident there.
            return self._transact(lambda: self.tree.promote(node_ids, tier=tier), staged, tier,
                                  lambda evictions: (evictions, slow, []))

    def evict(self, tier: str, nbytes: int):
        self._check_tier(tier)
        with self._lock:
            evictions = self.tree.evict(tier, nbytes)
            self._apply(evictions)
            return evictions

    def remove(self, node_id: int):
        """Drop a node and its subtree (none of it locked), freeing their blocks."""
        with self._lock:
            evictions = self.tree.remove(node_id)
            self._apply(evictions)
            return evictions

    def remove_document(self, doc_id: str):
        """Drop every unlocked node of a document (KnowledgeTree.remove_document), freeing their blocks."""
        with self._lock:
            result = self.tree.remove_document(doc_id)
            self._apply(result.evictions)
            return result

    def track_version(self, doc_id: str, key: str) -> int:
        """Record that document `doc_id` is now served under tree key `key` (its id
        plus a fingerprint of its content). If it was last served under another
        key, its content changed: the old key's unlocked nodes are dropped so their
        KV is never served again (locked ones go when evicted; no new request can
        reach them). Returns the number of nodes dropped. The record of a document
        ends when its nodes have all left the tree, so it stays bounded by them."""
        with self._lock:
            old = self._versions.get(doc_id)
            self._versions[doc_id] = key
            dropped = 0
            if old is not None and old != key:
                before = self.tree.document_nodes(old)
                dropped = before - self.remove_document(old).kept_locked
            if len(self._versions) > max(4096, 2 * self._versions_pruned_at):
                self._versions = {d: k for d, k in self._versions.items() if self.tree.document_nodes(k)}
                self._versions_pruned_at = len(self._versions)
            return dropped

    def set_capacity(self, tier: str, nbytes: int):
        """Change a tier's logical capacity, evicting down to it (pools keep their size)."""
        self._check_tier(tier)
        with self._lock:
            evictions = self.tree.set_capacity(tier, nbytes)
            self._apply(evictions)
            return evictions

    def get(self, node_id: int, out: Any = None) -> Any:
        """The node's payload from its fastest tier: a new uint8 array, or `out`
        (a writable contiguous buffer / CPU tensor of exactly the payload size).
        UnknownNodeError for a node the cache does not hold; StorageError for one
        whose bytes a failed move lost (it leaves the tree once unlocked)."""
        with self._lock:
            if node_id in self._lost:
                raise StorageError(f"node {node_id}: its KV bytes were lost by a failed move; recompute it")
            rec = self._blocks.get(node_id)
            if rec is None:
                raise UnknownNodeError(f"node {node_id} is not in the cache")
            tier = next(t for t in self.tiers if t in rec)
            blocks = rec[tier]
            if out is None:
                out = np.empty(blocks.nbytes, dtype=np.uint8)
            elif _payload_nbytes(out, "out") != blocks.nbytes:
                raise ValueError(f"out has {_payload_nbytes(out, 'out')} bytes; node {node_id} holds {blocks.nbytes}")
            self._stores[tier].read(blocks, out)
            return out

    def storage_stats(self) -> dict:
        """Per tier: segments, blocks_total, blocks_used, bytes_used, pinned, device
        (True when the tier's blocks are GPU memory); 'errors':
        nodes dropped because a move of their bytes failed; 'transfer': the
        TransferEngine's TransferStats."""
        with self._lock:
            out: Dict[str, Any] = {t: s.stats() for t, s in self._stores.items()}
            out["errors"] = self._errors
        out["transfer"] = self.engine.stats()
        return out

    def close(self) -> None:
        self.engine.wait_all()

    # --- transactions ------------------------------------------------------------
    def _fits(self, tier: str, nbytes: int) -> bool:
        return nbytes <= int(self.tree.stats().capacity_bytes[tier])

    def _stage_path(self, namespace, doc_ids, doc_bytes, payloads, tier) -> _Staged:
        """Before an insert: copy the reused prefix nodes slower than `tier` into new
        blocks there and write the payloads of the documents it will create. Nothing
        is staged for a request that can never fit (the tree refuses it at once)."""
        prefix = self.tree.peek(namespace, doc_ids)  # under our lock: the insert sees the same prefix
        level = self.tiers.index(tier)
        slow = [nid for nid, t in zip(prefix.node_ids, prefix.tiers) if self.tiers.index(t) > level]
        sizes = [b for b in doc_bytes[prefix.matched_docs:] if isinstance(b, int) and b > 0]
        staged = _Staged()
        if len(sizes) != len(doc_ids) - prefix.matched_docs or not self._fits(
                tier, sum(sizes) + sum(self.tree.node(n).nbytes for n in slow)):
            return staged  # the tree's own checks refuse it; their message is the better one
        try:
            staged.promoted = self._stage_copies(slow, tier)
            for i in range(prefix.matched_docs, len(doc_ids)):
                nbytes = int(doc_bytes[i]) // self.storage_scale
                blocks = self._stores[tier].allocate(nbytes)
                staged.created[i] = blocks
                data = payloads[i] if payloads is not None and payloads[i] is not None else None
                if data is None:
                    data = filler_payload(namespace, list(doc_ids[: i + 1]), nbytes)
                self._stores[tier].write(blocks, data)
        except BaseException as e:
            raise self._staging_failed(staged.all(), e, f"staging {list(doc_ids)} in {tier!r}")
        return staged

    def _stage_copies(self, node_ids: Sequence[int], tier: str) -> Dict[int, _Blocks]:
        """New blocks in `tier` holding a copy of each node's fastest bytes (one transfer batch)."""
        staged: Dict[int, _Blocks] = {}
        try:
            moves = []
            for nid in node_ids:
                src = self._fastest_blocks(nid)
                staged[nid] = self._stores[tier].allocate(src.nbytes)
                moves.append((src, staged[nid]))
            self._copy(moves)
        except BaseException as e:
            raise self._staging_failed(staged.values(), e, f"copying nodes {list(node_ids)} into {tier!r}")
        return staged

    def _staging_failed(self, blocks, error: BaseException, what: str) -> BaseException:
        """Free what was staged; the exception to raise: allocation and copy failures as
        StorageError (nothing changed), anything else as it is."""
        self._free_all(blocks)
        if isinstance(error, (MemoryError, OSError, RuntimeError)) and not isinstance(error, StorageError):
            wrapped = StorageError(f"{what} failed: {error}")
            wrapped.__cause__ = error
            return wrapped
        return error

    def _transact(self, tree_call, staged: _Staged, tier: str, changes):
        """Run a tree call that may promote into / create in `tier`; then attach the
        staged bytes to what it promoted and created and apply its evictions.
        changes(result) -> (evictions, promoted node ids, [(path index, created node id)])."""
        try:
            result = tree_call()
        except BaseException:
            self._free_all(staged.all())
            raise
        evictions, promoted, created = changes(result)
        missing = [n for n in promoted if n not in staged.promoted] + [i for i, _ in created if i not in staged.created]
        if missing:  # only if the tree changed outside this cache between peek and call
            raise RuntimeError(f"storage out of sync: the tree changed outside KVCache (unstaged {missing})")
        for nid in promoted:
            self._blocks[nid][tier] = staged.promoted.pop(nid)
        for i, nid in created:
            self._blocks[nid] = {tier: staged.created.pop(i)}
        self._free_all(staged.all())  # staged for what the tree did not do
        self._apply(evictions)
        return result

    def _apply(self, evictions) -> None:
        """Apply the tree's eviction events in order (caller holds the lock). A copied
        demotion that fails loses that node's bytes: it is dropped from the tree."""
        lost = []
        for ev in evictions:
            rec = self._blocks.get(ev.node_id)
            if rec is None or ev.from_tier not in rec:
                if ev.node_id in lost or ev.node_id in self._lost:
                    continue
                raise RuntimeError(f"storage out of sync: node {ev.node_id} has no blocks in {ev.from_tier!r}")
            if ev.to_tier is not None:
                if ev.copied:
                    try:
                        rec[ev.to_tier] = self._stage_copies([ev.node_id], ev.to_tier)[ev.node_id]
                    except Exception:  # any failure to move the bytes: give the node up, keep going
                        lost.append(ev.node_id)
                elif ev.to_tier not in rec:  # swap-out-only-once: the copy must exist
                    raise RuntimeError(f"storage out of sync: node {ev.node_id} has no {ev.to_tier!r} copy to keep")
            _TierStore.free(rec.pop(ev.from_tier))
            if not rec:
                del self._blocks[ev.node_id]
        self._lost.update(lost)
        self._errors += len(lost)
        self._drop_lost()

    def _drop_lost(self) -> None:
        """Drop the nodes whose bytes were lost, with their subtrees; one still locked
        by a reader is retried at the next call that moves bytes."""
        for nid in list(self._lost):
            try:
                evictions = self.tree.remove(nid)
            except UnknownNodeError:
                self._lost.discard(nid)  # already gone
                continue
            except ValueError:
                continue  # locked: get() refuses it meanwhile
            self._lost.discard(nid)
            for ev in evictions:
                rec = self._blocks.get(ev.node_id)
                if rec is not None and ev.from_tier in rec:
                    _TierStore.free(rec.pop(ev.from_tier))
                if rec is not None and not rec:
                    del self._blocks[ev.node_id]

    # --- internals ---------------------------------------------------------------
    def _check_tier(self, tier: str) -> None:
        if tier not in self._stores:
            raise ValueError(f"tier must be one of {self.tiers}, got {tier!r}")

    def _check_payloads(self, doc_ids, doc_bytes, payloads) -> None:
        if payloads is not None:
            if len(payloads) != len(doc_ids):
                raise ValueError(f"payloads has {len(payloads)} entries for {len(doc_ids)} doc_ids")
            if len(doc_bytes) != len(doc_ids):
                raise ValueError(f"doc_bytes has {len(doc_bytes)} entries for {len(doc_ids)} doc_ids")
            for i, p in enumerate(payloads):
                if p is None or not isinstance(doc_bytes[i], int) or doc_bytes[i] <= 0:
                    continue  # bad sizes: the tree's error
                want = int(doc_bytes[i]) // self.storage_scale
                got = _payload_nbytes(p, f"payloads[{i}]")
                if got != want:
                    raise ValueError(
                        f"payloads[{i}] has {got} bytes; doc_bytes[{i}] // storage_scale = {want}"
                    )

    def _fastest_blocks(self, node_id: int) -> _Blocks:
        rec = self._blocks[node_id]
        return rec[next(t for t in self.tiers if t in rec)]

    def _free_all(self, blocks) -> None:
        for b in blocks:
            _TierStore.free(b)

    def _copy(self, moves: list) -> None:
        """Run [(src _Blocks, dst _Blocks)] as one transfer batch and wait for it."""
        ops, bb = [], self.block_bytes
        for src, dst in moves:
            for k, (s, d) in enumerate(zip(src.addresses(), dst.addresses())):
                ops.append((d, s, min(bb, src.nbytes - k * bb)))
        if ops:
            try:
                self.engine.wait(self.engine.submit(ops))
            except (RuntimeError, OSError, ValueError) as e:
                raise StorageError(f"copying {sum(s.nbytes for s, _ in moves)} bytes of KV failed: {e}") from e
