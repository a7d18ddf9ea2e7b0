"""KV block storage: native block pools, the async transfer engine, and KVCache.

`BlockPool`, `DevicePool` and `TransferEngine` come from the native core (`hyperrag._core`);
`KVCache` joins them with the knowledge tree (see docs/cache_api.md).
"""
from .._core import (
    BlockPool,
    DevicePool,
    PoolExhaustedError,
    TransferEngine,
    TransferStats,
    cuda_compiled,
    cuda_device_count,
)
from .kv_cache import KVCache, StorageError, filler_payload

__all__ = [
    "BlockPool",
    "DevicePool",
    "KVCache",
    "PoolExhaustedError",
    "StorageError",
    "TransferEngine",
    "TransferStats",
    "cuda_compiled",
    "cuda_device_count",
    "filler_payload",
]
