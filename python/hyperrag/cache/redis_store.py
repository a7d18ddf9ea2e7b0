"""RedisKVStore: node payloads in Redis, shared by every process that talks to the server.

Same contract as DiskKVStore (contains / get / get_many / put by namespace and
content path), so a SegmentStore uses either as its shared layer.

- Keys are deterministic across processes and machines: a prefix, the layout
  version, and blake2b of the node's identity (namespace + content path, see
  disk_store.path_key). Python's salted hash() is never used.
- A value is one checksummed blob (hyperrag.cache.blob: magic, version,
  identity, length, checksum, payload), so bytes and metadata cannot
  disagree. A blob larger than ``chunk_bytes`` (32 MiB: one document of a
  small model fits one value, which reads in one round trip) is stored as
  chunks plus a manifest written last; a reader that finds a chunk missing
  (evicted) or the reassembled blob failing its checksum gets a miss, never
  wrong bytes.
- Every call has a socket timeout. After a failure the store stops calling
  Redis for a back-off period (doubling up to ``max_backoff_s``), so a dead
  server costs one timeout, not one per query; the next call after the
  back-off reconnects. Failures are counted, never raised to the serving path
  as anything but StorageError.
- Reads of several nodes take one round trip (MGET, ``get_many``); writes are
  pipelined. Writes are synchronous (``write="through"``) or queued to one
  background thread (``write="back"``) that sends what is queued in one
  pipeline; the queue is bounded and a put that finds it full is dropped and
  counted (a cache may lose an entry; it must not grow without bound or block
  a query).
- Size: Redis's own ``maxmemory`` with an LRU policy bounds it (see
  docs/remote.md); this store keeps no accounting of its own.

Thread-safe: redis-py's client is, and the store's counters are locked.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import blob
from .disk_store import path_key
from .kv_cache import StorageError

LAYOUT_VERSION = 1
_MANIFEST = b"HRCHUNKS"
WRITE_MODES = ("through", "back")
WRITE_BATCH = 16  # queued writes sent in one pipelined round trip


class RemoteError(StorageError):
    """Redis could not be reached, timed out, or answered with an error."""


@dataclass
class RemoteStats:
    gets: int = 0
    hits: int = 0
    puts: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0          # failed calls (connection, timeout, server error)
    corrupt: int = 0         # values refused: truncated, checksum mismatch, chunk missing
    skipped: int = 0         # calls not made while backing off after a failure
    dropped_writes: int = 0  # write-back puts dropped because the queue was full


class RedisKVStore:
    """Payloads by (namespace, path of keys) in one Redis server (or a cluster's client)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, timeout_s: float = 0.5,
                 chunk_bytes: int = 32 << 20, prefix: str = "hyperrag:kv", write: str = "back",
                 queue_size: int = 64, max_backoff_s: float = 5.0, client=None):
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"url must be a redis URL such as 'redis://127.0.0.1:6379/0', got {url!r}")
        for name, value in (("timeout_s", timeout_s), ("max_backoff_s", max_backoff_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 3600:
                raise ValueError(f"{name} must be a number of seconds in (0, 3600), got {value!r}")
        for name, value in (("chunk_bytes", chunk_bytes), ("queue_size", queue_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if write not in WRITE_MODES:
            raise ValueError(f"write must be one of {WRITE_MODES}, got {write!r}")
        if client is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.client = client
        self.url, self.chunk_bytes, self.prefix, self.write = url, chunk_bytes, prefix, write
        self.max_backoff_s = float(max_backoff_s)
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._stats = RemoteStats()
        self._lock = threading.Lock()
        self._queue: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self._writer: Optional[threading.Thread] = None
        if write == "back":
            self._writer = threading.Thread(target=self._drain, name="hyperrag-redis-writer", daemon=True)
            self._writer.start()

    # ------------------------------------------------------------ contract
    def key(self, namespace: str, keys: Sequence[str]) -> str:
        digest = hashlib.blake2b(path_key(namespace, keys).encode("utf-8"), digest_size=20).hexdigest()
        return f"{self.prefix}:v{LAYOUT_VERSION}:{digest}"

    def contains(self, namespace: str, keys: Sequence[str]) -> bool:
        exists = self._call(lambda: self.client.exists(self.key(namespace, keys)))
        return bool(exists)

    def get(self, namespace: str, keys: Sequence[str]) -> Optional[np.ndarray]:
        """The payload, or None when Redis does not hold it; BlobError when the stored value
        is not intact, RemoteError when Redis cannot answer (both StorageError, counted)."""
        (entry,) = self.get_many(namespace, [keys])
        if isinstance(entry, Exception):
            raise entry
        return entry

    def get_many(self, namespace: str, paths: Sequence[Sequence[str]]) -> list:
        """Several nodes in one round trip (MGET; chunked values take one more each). Each
        entry is the payload, None (absent), or the BlobError that refused the value;
        RemoteError (counted) when Redis cannot answer."""
        keys = [self.key(namespace, path) for path in paths]
        self._count(gets=len(keys))
        values = self._call(lambda: self.client.mget(keys))
        out = []
        for path, key, value in zip(paths, keys, values):
            try:
                out.append(None if value is None else self._decode(namespace, path, key, value))
            except blob.BlobError as e:
                self._count(corrupt=1)
                out.append(e)
        return out

    def _decode(self, namespace: str, path: Sequence[str], key: str, value: bytes) -> np.ndarray:
        if value.startswith(_MANIFEST):
            count = int(value[len(_MANIFEST):])
            parts = self._call(lambda: self.client.mget([f"{key}:{i}" for i in range(count)]))
            if any(p is None for p in parts):
                raise blob.BlobError(f"a chunk of {key} is missing (evicted or not yet written)")
            value = b"".join(parts)
        payload = blob.decode(value, path_key(namespace, path))
        self._count(hits=1, bytes_read=len(value))
        return payload

    def put(self, namespace: str, keys: Sequence[str], payload) -> bool:
        """Store a node's payload (write-through), or queue it (write-back). False when the
        write was queued or dropped, or Redis could not take it (counted)."""
        item = (self.key(namespace, keys), blob.encode(path_key(namespace, keys), payload))
        if self.write == "back":
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._count(dropped_writes=1)
            return False
        try:
            self._write(*item)
        except RemoteError:
            return False
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued writes are done (write-back); False if they are not within the timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def stats(self) -> RemoteStats:
        with self._lock:
            return RemoteStats(**self._stats.__dict__)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------ internals
    def _write(self, key: str, value) -> None:
        self._write_many([(key, value)])

    def _write_many(self, items) -> None:
        """Store (key, blob) items in one pipelined round trip; a chunked blob's manifest goes
        after its chunks, so a reader never sees a manifest before all of them."""
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            if len(value) <= self.chunk_bytes:
                pipe.set(key, value)
                continue
            view = memoryview(value)  # chunks are views: no copy of the blob
            count = 0
            for i in range(0, len(value), self.chunk_bytes):
                pipe.set(f"{key}:{count}", view[i:i + self.chunk_bytes])
                count += 1
            pipe.set(key, _MANIFEST + str(count).encode())
        self._call(pipe.execute)
        self._count(puts=len(items), bytes_written=sum(len(v) for _, v in items))

    def _drain(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < WRITE_BATCH:  # whatever else is queued goes in the same round trip
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write_many(items)
            except RemoteError:
                pass  # counted in _call; these entries are simply not shared
            finally:
                for _ in items:
                    self._queue.task_done()

    def _call(self, fn):
        """Run one Redis call; RemoteError (counted) on failure or while backing off."""
        with self._lock:
            if time.monotonic() < self._retry_at:
                self._stats.skipped += 1
                raise RemoteError(f"redis at {self.url} failed recently; retrying in "
                                  f"{self._retry_at - time.monotonic():.2f} s")
        try:
            result = fn()
        except Exception as e:  # redis-py raises ConnectionError, TimeoutError, ResponseError, ...
            with self._lock:
                self._stats.errors += 1
                self._backoff_s = min(self.max_backoff_s, max(0.05, 2 * self._backoff_s))
                self._retry_at = time.monotonic() + self._backoff_s
            raise RemoteError(f"redis at {self.url}: {type(e).__name__}: {e}") from e
        with self._lock:
            self._backoff_s = 0.0
        return result

    def _count(self, **deltas) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)
