"""One self-describing, checksummed blob per cached node, for stores outside the process.

Layout (little-endian): magic b"HRKV", format version (u16), reserved (u16),
key length (u32), payload length (u64), CRC-32 of key + payload (u32), then the
key (UTF-8) and the payload. The key names what the bytes are (the node's
namespace and content path), so a blob read back under another key, a
truncated blob or a flipped bit is refused, never served as KV.

The checksum guards against accidents (truncation, bit rot, a value written
over), not against an adversary who can write to the store: zlib's CRC-32 runs
at several GB/s where blake2b ran at about 1 GB/s and bounded remote reads.
Version 1 blobs (blake2b) are refused like any other version: a miss.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from .kv_cache import StorageError

MAGIC = b"HRKV"
VERSION = 2
_HEADER = struct.Struct("<4sHHIQI")


class BlobError(StorageError):
    """A stored blob is missing its header, truncated, corrupted, of another format
    version, or stored under another key: its bytes must not be used."""


def _digest(key: bytes, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(key))


def encode(key: str, payload) -> bytes:
    """The blob of ``payload`` (any contiguous buffer) stored under ``key``. bytes, built
    with one copy of the payload (redis-py copies any other buffer type once more)."""
    k = key.encode("utf-8")
    data = memoryview(payload).cast("B")
    return b"".join((_HEADER.pack(MAGIC, VERSION, 0, len(k), data.nbytes, _digest(k, data)), k, data))


def decode(blob: bytes, key: str) -> np.ndarray:
    """The payload of a blob stored under ``key`` (uint8 array); BlobError if it is not intact."""
    if len(blob) < _HEADER.size:
        raise BlobError(f"blob of {len(blob)} bytes is shorter than its header ({_HEADER.size})")
    magic, version, _, key_len, payload_len, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise BlobError(f"not a HyperRAG KV blob (magic {magic!r})")
    if version != VERSION:
        raise BlobError(f"blob format version {version}; this build reads version {VERSION}")
    if len(blob) != _HEADER.size + key_len + payload_len:
        raise BlobError(f"blob is {len(blob)} bytes; its header says {_HEADER.size + key_len + payload_len}")
    k = blob[_HEADER.size:_HEADER.size + key_len]
    if k != key.encode("utf-8"):
        raise BlobError("blob was stored under another key")
    payload = memoryview(blob)[_HEADER.size + key_len:]
    if _digest(k, payload) != digest:
        raise BlobError("blob checksum mismatch: its bytes were corrupted")
    return np.frombuffer(payload, dtype=np.uint8)
