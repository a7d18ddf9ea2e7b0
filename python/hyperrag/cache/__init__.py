"""The knowledge cache: Python face of the native core (see docs/cache_api.md)."""
from .tree import *  # noqa: F401,F403  KnowledgeTree, CostProfile, Match, Eviction, ...
from .storage import *  # noqa: F401,F403  BlockPool, TransferEngine, KVCache, StorageError
from .identity import document_id, document_key, token_fingerprint  # noqa: F401
