"""The knowledge tree and its cost profile, from the native core.

``KnowledgeTree`` keeps the metadata of cached document KV (no KV bytes):
one node per document *after the exact documents above it* in a namespace
(model + system prompt), resident in one or more tiers ("gpu", "host",
"remote", fastest first), evicted by PGDSF, GDSF, LRU or LFU. Every method
validates its input before changing anything and is atomic: an exception
leaves the tree as it was. All methods are thread-safe and release the GIL.

Errors: ``ValueError`` for bad arguments (the message names the field and the
allowed values), ``CapacityError`` (a ``ValueError``) when what is locked
leaves no room, ``UnknownNodeError`` (a ``KeyError``) for an id that names no
live node. Arguments of the wrong type or range raise TypeError/ValueError
naming the argument. The contract is docs/cache_api.md;
``hyperrag.testing.reference_tree`` is a pure-Python twin with the same
semantics (a test oracle).
"""
from .._core import (
    POLICIES,
    TIERS,
    AccessResult,
    CapacityError,
    CostProfile,
    Eviction,
    InsertResult,
    KnowledgeTree,
    Match,
    NodeInfo,
    RemoveResult,
    TreeStats,
    UnknownNodeError,
)

__all__ = [
    "POLICIES",
    "TIERS",
    "AccessResult",
    "CapacityError",
    "CostProfile",
    "Eviction",
    "InsertResult",
    "KnowledgeTree",
    "Match",
    "NodeInfo",
    "RemoveResult",
    "TreeStats",
    "UnknownNodeError",
]
