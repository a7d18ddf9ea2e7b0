"""Type stubs of the native module hyperrag._core (see docs/cache_api.md)."""
from typing import Dict, List, Optional, Sequence, Tuple

# --- tree ---

TIERS: Tuple[str, str, str]
POLICIES: Tuple[str, str, str, str]

class CapacityError(ValueError):
    """Room could not be made: what is left in the tier is locked."""

class UnknownNodeError(KeyError):
    """A node id that names no live node."""

class CostProfile:
    """Prefill seconds T(cached_tokens, new_tokens) on a grid, bilinearly interpolated."""
    def __init__(self, cached_tokens: Sequence[float], new_tokens: Sequence[float],
                 seconds: Sequence[Sequence[float]]) -> None: ...
    def seconds(self, cached_tokens: float, new_tokens: float) -> float: ...
    def cost_per_token(self, cached_tokens: float, new_tokens: float) -> float: ...
    @property
    def cached_tokens(self) -> List[float]: ...
    @property
    def new_tokens(self) -> List[float]: ...
    @property
    def table(self) -> List[List[float]]: ...

class Eviction:
    node_id: int
    from_tier: str
    to_tier: Optional[str]    # None: the copy in from_tier was dropped
    copied: bool              # False on a demotion: the slower copy was already there
    nbytes: int

class Match:
    node_ids: List[int]
    tiers: List[str]
    tokens: List[int]
    matched_docs: int
    matched_tokens: int

class InsertResult:
    node_ids: List[int]
    created: List[bool]
    promoted: List[int]
    evictions: List[Eviction]

class AccessResult:
    node_ids: List[int]
    created: List[bool]
    hit_tiers: List[str]
    matched_docs: int
    matched_tokens: int
    promoted: List[int]
    evictions: List[Eviction]

class RemoveResult:
    evictions: List[Eviction]
    kept_locked: int  # nodes of the document kept because they or a node below them are locked

class NodeInfo:
    node_id: int
    doc_id: str
    namespace: str
    parent: Optional[int]
    tokens: int
    nbytes: int
    tier: str
    resident_tiers: List[str]
    priorities: List[float]
    lock_count: int
    frequency: int
    priority: float
    cost_per_token: float
    cost_samples: int
    last_access: int
    children: List[int]

class TreeStats:
    num_nodes: int
    interned_names: int  # document + namespace names held; released with their last node
    used_bytes: Dict[str, int]
    capacity_bytes: Dict[str, int]
    evictions: Dict[str, int]
    clock: Dict[str, float]
    lookups: int
    hits: int
    hit_tokens: int
    lookup_tokens: int

class KnowledgeTree:
    """Prefix tree of document KV metadata with tiered, policy-driven eviction."""
    def __init__(self, capacities: Dict[str, int], policy: str = "pgdsf",
                 profile: Optional[CostProfile] = None) -> None: ...
    @property
    def policy(self) -> str: ...
    @property
    def tiers(self) -> List[str]: ...
    def match(self, namespace: str, doc_ids: Sequence[str],
              doc_tokens: Optional[Sequence[int]] = None, lock: bool = False) -> Match: ...
    def peek(self, namespace: str, doc_ids: Sequence[str]) -> Match: ...
    def best_order(self, namespace: str, doc_ids: Sequence[str], fixed: int = 0) -> List[str]: ...
    def insert(self, namespace: str, doc_ids: Sequence[str], doc_tokens: Sequence[int],
               doc_bytes: Sequence[int], tier: str = "gpu", lock: bool = False) -> InsertResult: ...
    def access(self, namespace: str, doc_ids: Sequence[str], doc_tokens: Sequence[int],
               doc_bytes: Sequence[int], tier: str = "gpu", lock: bool = False) -> AccessResult: ...
    def lock(self, node_ids: Sequence[int]) -> None: ...
    def unlock(self, node_ids: Sequence[int]) -> None: ...
    def touch(self, node_ids: Sequence[int]) -> None: ...
    def record_compute(self, node_ids: Sequence[int], cached_tokens: int, new_tokens: int) -> None: ...
    def evict(self, tier: str, nbytes: int) -> List[Eviction]: ...
    def promote(self, node_ids: Sequence[int], tier: str = "gpu") -> List[Eviction]: ...
    def remove(self, node_id: int) -> List[Eviction]: ...
    def remove_document(self, doc_id: str) -> RemoveResult: ...
    def document_nodes(self, doc_id: str) -> int: ...
    def set_capacity(self, tier: str, nbytes: int) -> List[Eviction]: ...
    def node(self, node_id: int) -> NodeInfo: ...
    def node_ids(self) -> List[int]: ...
    def stats(self) -> TreeStats: ...
    def check_invariants(self) -> List[str]: ...

# --- storage ---

from typing import Any, Union

_Buffer = Any  # numpy array, bytes-like object or torch tensor (contiguous)

def cuda_compiled() -> bool: ...
def cuda_device_count() -> int: ...

class PoolExhaustedError(MemoryError):
    """allocate() asked for more blocks than are free."""

class BlockPool:
    """Fixed-size blocks of host memory in one arena (pinned when a CUDA device exists)."""
    def __init__(self, block_bytes: int, num_blocks: int, pinned: Optional[bool] = None) -> None: ...
    def allocate(self, n: int) -> List[int]: ...
    def free(self, ids: Sequence[int]) -> None: ...
    def write(self, ids: Sequence[int], buffer: _Buffer) -> None: ...
    def read(self, ids: Sequence[int], out: _Buffer) -> None: ...
    def view(self, id: int) -> Any: ...  # numpy.ndarray[uint8], zero copy
    def address(self, id: int) -> int: ...
    def is_allocated(self, id: int) -> bool: ...
    def blocks_for(self, nbytes: int) -> int: ...
    @property
    def block_bytes(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def used_blocks(self) -> int: ...
    @property
    def free_blocks(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    @property
    def pinned(self) -> bool: ...

class TransferStats:
    bytes: int
    copies: int
    batches: int
    failed: int   # batches that ended in an error (counted in none of the above)
    pending: int
    busy_seconds: float
    @property
    def gbps(self) -> float: ...

class TransferEngine:
    """Batched asynchronous copies with tickets on CPU threads or CUDA streams."""
    def __init__(self, threads: int = 2, backend: str = "auto") -> None: ...
    def submit(self, copies: Sequence[Tuple[Union[int, _Buffer], Union[int, _Buffer], int]],
               stream: Optional[int] = None) -> int:
        """stream (cuda backend only): copies start after the work already queued on
        that CUDA stream handle, e.g. torch.cuda.current_stream().cuda_stream."""
    def poll(self, ticket: int) -> bool: ...
    def wait(self, ticket: int) -> None:
        """Blocks until the ticket completes; RuntimeError naming the device error if it failed."""
    def wait_all(self) -> None: ...
    def stats(self) -> TransferStats: ...
    @property
    def backend(self) -> str: ...
    @property
    def threads(self) -> int: ...
