"""DiskKVStore: node payloads in files, shared by every process that opens the directory.

One file per node, named by a hash of the node's namespace and content path
(the same identity as the tree's keys, hyperrag.cache.identity), holding one
checksummed blob (hyperrag.cache.blob). Writes go to a temporary file renamed
into place, so a reader sees a whole blob or none; processes need no lock.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import blob


def path_key(namespace: str, keys: Sequence[str]) -> str:
    """The identity of a node: its namespace and the keys of its path, length-prefixed."""
    parts = [namespace, *keys]
    return "".join(f"{len(p)}:{p}" for p in parts)


class DiskKVStore:
    """Payloads by (namespace, path of keys). Thread- and process-safe (atomic renames)."""

    def __init__(self, directory):
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ValueError(f"directory must be a path, got {directory!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _file(self, identity: str) -> Path:
        name = hashlib.blake2b(identity.encode("utf-8"), digest_size=20).hexdigest()
        return self.directory / name[:2] / f"{name}.kv"

    def contains(self, namespace: str, keys: Sequence[str]) -> bool:
        return self._file(path_key(namespace, keys)).is_file()

    def put(self, namespace: str, keys: Sequence[str], payload) -> bool:
        """Store a node's payload; False when it was already there (content-addressed)."""
        identity = path_key(namespace, keys)
        target = self._file(identity)
        if target.is_file():
            return False
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob.encode(identity, payload))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def get(self, namespace: str, keys: Sequence[str]) -> Optional[np.ndarray]:
        """The payload, or None when no file holds it; BlobError when the file is not intact."""
        identity = path_key(namespace, keys)
        try:
            data = self._file(identity).read_bytes()
        except FileNotFoundError:
            return None
        return blob.decode(data, identity)

    def get_many(self, namespace: str, paths: Sequence[Sequence[str]]) -> list:
        """``get`` of each path: the payload, None, or the BlobError that refused the file."""
        out = []
        for path in paths:
            try:
                out.append(self.get(namespace, path))
            except blob.BlobError as e:
                out.append(e)
        return out

    def remove(self, namespace: str, keys: Sequence[str]) -> None:
        self._file(path_key(namespace, keys)).unlink(missing_ok=True)
