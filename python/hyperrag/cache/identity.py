"""Document identity: the caller's id plus a fingerprint of the document's exact content.

A tree node holds the KV of a document *as it was when computed*, so the key it
is stored under must change whenever the content does: otherwise a document
re-sent under the same id with new text would be served its old KV. The key is
``<doc_id>#<fingerprint>``; the fingerprint is a stable hash (blake2b) of the
exact token ids, the same in every process and on every machine, so keys in a
shared tier agree. Python's ``hash()`` is never used: it is salted per process.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence, Union

import numpy as np

FINGERPRINT_BYTES = 8  # 64 bits: a collision needs ~4e9 versions of one document id


def token_fingerprint(token_ids: Sequence[int]) -> str:
    """Hex blake2b digest of the token ids as little-endian int64."""
    data = np.asarray(token_ids, dtype="<i8").tobytes()
    return hashlib.blake2b(data, digest_size=FINGERPRINT_BYTES).hexdigest()


def document_key(doc_id: str, fingerprint: str) -> str:
    """The tree key of a document's content: its id and the fingerprint of that content."""
    return f"{doc_id}#{fingerprint}"


def document_id(key: str) -> str:
    """The caller's document id inside a tree key (fingerprints never contain '#')."""
    return key.rsplit("#", 1)[0]


def model_namespace(model_dir: Union[str, Path], dtype: str) -> str:
    """The namespace of KV computed by a model's weights in one dtype: the directory's
    name plus a hash of its resolved path, and the dtype. Every engine that runs the
    same weights (transformers, vLLM) derives the same one, so they share KV."""
    resolved = Path(model_dir).resolve()
    return f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}-{dtype}"
