"""HyperRAGConnector: vLLM loads and saves document KV through HyperRAG's tree and tiers.

vLLM does the forward pass; HyperRAG answers how many tokens of whole cached
segments (the system prompt, then documents: hyperrag.engines.base.Prompt) a
request can load, rounded down to vLLM's block size, copies their KV into
vLLM's paged blocks before the forward, and stores each newly computed
segment as its own node after it, in the payload layout of the transformers
engine (so KV computed by either engine serves the other for the same model
and dtype). The request
names its segments in ``kv_transfer_params["hyperrag"]`` (``make_request``
in llm.py builds it): ``{"namespace": ..., "segments": [[key, tokens], ...]}``;
a request without them is left to vLLM alone.

Both connector roles of a process share one SegmentStore (KVCache + an
optional directory other processes share). The scheduler side holds (locks)
the nodes it promised from the allocation until the request finishes, so
nothing it loads or builds on is evicted meanwhile; the worker side copies
synchronously before the forward and saves after it. A load that fails
reports its blocks to vLLM, which recomputes them (kv_load_failure_policy
"recompute"); the failure is counted in the store's stats.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                                KVConnectorRole)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from hyperrag.cache.segment_store import SegmentStore, shared_store

from . import paged

log = logging.getLogger("hyperrag")
PARAMS_KEY = "hyperrag"
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


@dataclass
class Segments:
    """A request's segment keys and token counts, and where each starts."""

    namespace: str
    keys: List[str]
    tokens: List[int]

    @property
    def bounds(self) -> List[int]:
        out = [0]
        for t in self.tokens:
            out.append(out[-1] + t)
        return out

    @staticmethod
    def from_params(params: Optional[dict]) -> Optional["Segments"]:
        """The request's segments, or None when it names none or names them badly."""
        spec = (params or {}).get(PARAMS_KEY)
        if spec is None:
            return None
        try:
            namespace, pairs = spec["namespace"], spec["segments"]
            keys = [str(k) for k, _ in pairs]
            tokens = [int(t) for _, t in pairs]
            if not isinstance(namespace, str) or not keys or min(tokens) <= 0:
                raise ValueError("empty namespace, no segments or a segment without tokens")
        except (KeyError, TypeError, ValueError) as e:
            log.warning("hyperrag connector: ignoring malformed kv_transfer_params %r: %s", spec, e)
            return None
        return Segments(namespace, keys, tokens)


@dataclass
class LoadSpec:
    request_id: str
    block_ids: List[int]
    start: int
    end: int
    pieces: List[Tuple[int, int, int]]  # (node id, segment start, segment end), in order


@dataclass
class SaveSpec:
    request_id: str
    segments: Segments
    block_ids: List[int]
    indices: List[int]                   # segment indices completed in this step and not stored yet


@dataclass
class HyperRAGConnectorMetadata(KVConnectorMetadata):
    loads: List[LoadSpec] = field(default_factory=list)
    saves: List[SaveSpec] = field(default_factory=list)


@dataclass
class HyperRAGConnectorStats(KVConnectorStats):
    """The store's counters over an interval (SegmentStats.counters: segments and tokens
    taken, by tier, from disk, bytes loaded and saved, failures); vLLM sums them across
    workers and logs them with its "KV Transfer metrics"."""

    def reset(self) -> None:
        self.data = {}

    def aggregate(self, other: KVConnectorStats) -> "HyperRAGConnectorStats":
        for name, value in other.data.items():
            self.data[name] = self.data.get(name, 0) + value
        return self

    def reduce(self) -> Dict[str, int]:
        return dict(self.data)

    def is_empty(self) -> bool:
        return not any(self.data.values())


@dataclass
class _Plan:
    """Scheduler-side state of one request."""

    segments: Segments
    stored: int                          # leading segments already in the store at admission
    external: int = 0                    # tokens vLLM will take from us
    held: List[int] = field(default_factory=list)
    block_ids: List[int] = field(default_factory=list)
    next_save: int = 0


class HyperRAGConnector(KVConnectorBase_V1):
    """KVConnectorBase_V1 over a SegmentStore. kv_connector_extra_config: ``capacities``
    (tier -> bytes of the store, default {"host": 4 GiB}), ``directory`` (a folder other
    processes share, default none) and ``policy`` (eviction, default "gdsf")."""

    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        capacities = {str(k): int(v) for k, v in extra.get("capacities", {"host": 4 << 30}).items()}
        self.store: SegmentStore = shared_store(capacities, extra.get("directory"), extra.get("policy", "gdsf"))
        self.block_size = vllm_config.cache_config.block_size
        self._plans: Dict[str, _Plan] = {}
        self._saving: Dict[str, dict] = {}  # request -> segment index -> payload being filled ("failed": True)
        self._layer_count: Optional[int] = None
        self._reported: Dict[str, int] = {}
        self._failed_blocks: set = set()

    # ---------------------------------------------------------------- scheduler side
    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> Tuple[int, bool]:
        """Tokens of whole cached segments beyond vLLM's own hit (no side effects)."""
        segments = Segments.from_params(request.kv_transfer_params)
        if segments is None:
            return 0, False
        n = self.store.cached_prefix(segments.namespace, segments.keys)
        end = min(segments.bounds[n], len(request.prompt_token_ids) - 1)  # vLLM computes at least one token
        # Load whole blocks only: vLLM then computes the rest from a block boundary, as after its own
        # prefix-cache hits, and in bf16 the outputs stay identical to a run without any cache (a
        # chunk starting mid-block rounds differently in the CPU attention kernel).
        end -= end % self.block_size
        return max(0, end - num_computed_tokens), False

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        segments = Segments.from_params(request.kv_transfer_params)
        if segments is None:
            return
        plan = self._plans.get(request.request_id)
        if plan is None:
            plan = self._plans[request.request_id] = _Plan(
                segments, self.store.cached_prefix(segments.namespace, segments.keys))
            plan.next_save = plan.stored
        plan.external = num_external_tokens
        if num_external_tokens > 0 and not plan.held:
            n = self.store.cached_prefix(segments.namespace, segments.keys)
            plan.held = self.store.acquire(request.request_id, segments.namespace, segments.keys[:n],
                                           segments.tokens[:n])

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        meta = HyperRAGConnectorMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            plan = self._plans.get(new.req_id)
            if plan is None:
                continue
            plan.block_ids = list(new.block_ids[0])
            if plan.external:
                end = new.num_computed_tokens
                meta.loads.append(LoadSpec(new.req_id, plan.block_ids, end - plan.external, end,
                                           self._pieces(plan)))
                plan.external = 0
            self._plan_saves(meta, new.req_id, plan, new.num_computed_tokens + scheduled.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            plan = self._plans.get(req_id)
            if plan is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if new_blocks is not None:
                plan.block_ids += list(new_blocks[0])
            self._plan_saves(meta, req_id, plan, cached.num_computed_tokens[i] + scheduled.get(req_id, 0))
        return meta

    def _pieces(self, plan: _Plan) -> List[Tuple[int, int, int]]:
        bounds = plan.segments.bounds
        return [(nid, bounds[j], bounds[j + 1]) for j, nid in enumerate(plan.held)]

    def _plan_saves(self, meta, req_id: str, plan: _Plan, computed_after: int) -> None:
        """Segments whose tokens are all computed by the end of this step, not stored yet."""
        bounds = plan.segments.bounds
        done = [j for j in range(plan.next_save, len(plan.segments.keys)) if bounds[j + 1] <= computed_after]
        if done:
            meta.saves.append(SaveSpec(req_id, plan.segments, list(plan.block_ids), done))
            plan.next_save = done[-1] + 1

    def request_finished(self, request, block_ids) -> Tuple[bool, Optional[dict]]:
        self._plans.pop(request.request_id, None)
        self.store.release(request.request_id)
        return False, None

    # ------------------------------------------------------------------- worker side
    def _layers(self, forward_context) -> List[Tuple[int, torch.Tensor, paged.PagedLayout]]:
        """(layer index, paged KV tensor, its layout) of every attention layer, by index."""
        out = []
        for name, layer in forward_context.no_compile_layers.items():
            kv = getattr(layer, "kv_cache", None)
            match = _LAYER_INDEX.search(name)
            if kv is None or match is None:
                continue
            kv = kv[0] if isinstance(kv, (list, tuple)) else kv
            out.append((int(match.group(1)), kv, self._layout(layer, kv)))
        return sorted(out, key=lambda x: x[0])

    def _layout(self, layer, kv_layer: torch.Tensor) -> paged.PagedLayout:
        isa = getattr(layer, "isa", None)
        if isa is None:
            raise NotImplementedError("the HyperRAG connector copies KV for vLLM's CPU attention backend; "
                                      f"layer {type(layer).__name__} has no CPU kernel ISA")
        return paged.layout_for(isa, kv_layer.dtype, self.block_size, kv_layer.shape[3] // 2)

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        """Copy the held segments' KV into the request's blocks, segment by segment."""
        meta = self._get_connector_metadata()
        if not meta.loads:
            return
        layers = self._layers(forward_context)
        for spec in meta.loads:
            position = spec.start
            try:
                for node_id, seg_start, seg_end in spec.pieces:
                    a, b = max(seg_start, spec.start), min(seg_end, spec.end)
                    if a >= b:
                        continue
                    kv = self._payload(node_id, layers[0][1], len(layers), seg_end - seg_start)
                    for i, (_, kv_layer, layout) in enumerate(layers):
                        layout.write(kv_layer, spec.block_ids, a, kv[i, 0, :, a - seg_start:b - seg_start],
                                     kv[i, 1, :, a - seg_start:b - seg_start])
                    position = b
                if position < spec.end:
                    raise LookupError(f"held segments cover tokens {spec.start}-{position} of {spec.end}")
            except Exception as e:  # any failure: vLLM recomputes these blocks, the answer stays right
                log.warning("hyperrag connector: loading KV of request %s failed (%r); recomputing",
                            spec.request_id, e)
                self.store.count_failure()
                first, last = position // self.block_size, (spec.end - 1) // self.block_size
                self._failed_blocks.update(spec.block_ids[first:last + 1])

    def _payload(self, node_id: int, like: torch.Tensor, layers: int, tokens: int) -> torch.Tensor:
        """A node's payload as [layers, 2, kv_heads, tokens, head_dim], dtype and sizes of ``like``
        (a paged layer [blocks, kv_heads, block_size, 2 * head_dim])."""
        raw = torch.from_numpy(np.ascontiguousarray(self.store.read(node_id)))
        return raw.view(like.dtype).view(layers, 2, like.shape[1], tokens, like.shape[3] // 2)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are synchronous, done before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kwargs: Any) -> None:
        """Copy this layer's KV of the new segments into their payloads (stored at the end of the step)."""
        meta = self._get_connector_metadata()
        match = _LAYER_INDEX.search(layer_name)
        if not meta.saves or match is None:
            return
        from vllm.forward_context import get_forward_context

        context = get_forward_context()
        index = int(match.group(1))
        for spec in meta.saves:
            saving = self._saving.setdefault(spec.request_id, {})
            if saving.get("failed"):
                continue
            try:
                layout = self._layout(context.no_compile_layers[layer_name], kv_layer)
                bounds = spec.segments.bounds
                a, b = bounds[spec.indices[0]], bounds[spec.indices[-1] + 1]
                keys, values = layout.read(kv_layer, spec.block_ids, a, b)
                for j in spec.indices:
                    payload = saving.get(j)
                    if payload is None:  # [layers, 2, kv heads, tokens, head dim], the transformers engine's layout
                        payload = saving[j] = kv_layer.new_empty(
                            (self._num_layers(context), 2, keys.shape[0], bounds[j + 1] - bounds[j], keys.shape[2]))
                    payload[index, 0].copy_(keys[:, bounds[j] - a:bounds[j + 1] - a])
                    payload[index, 1].copy_(values[:, bounds[j] - a:bounds[j + 1] - a])
            except Exception as e:  # the answer is unaffected: these segments are just not cached
                log.warning("hyperrag connector: copying out KV of request %s failed (%r); not caching it",
                            spec.request_id, e)
                self.store.count_failure()
                saving.clear()
                saving["failed"] = True

    def _num_layers(self, forward_context) -> int:
        if self._layer_count is None:
            self._layer_count = len(self._layers(forward_context))
        return self._layer_count

    def wait_for_save(self) -> None:
        """Store each new segment as its own node."""
        if not self.has_connector_metadata():
            return
        for spec in self._get_connector_metadata().saves:
            saving = self._saving.pop(spec.request_id, {})
            if saving and not saving.get("failed"):
                payloads = {j: saving[j].view(-1).view(torch.uint8).numpy() for j in spec.indices}
                self.store.save(spec.segments.namespace, spec.segments.keys, spec.segments.tokens, payloads)

    def get_kv_connector_stats(self) -> Optional[HyperRAGConnectorStats]:
        """What the store counted since the last call. Only the worker side reports: both
        sides of a process share one store, so reporting from both would count twice."""
        if self._role != KVConnectorRole.WORKER:
            return None
        now = self.store.stats().counters()
        delta = {name: value - self._reported.get(name, 0) for name, value in now.items()}
        self._reported = now
        stats = HyperRAGConnectorStats(data=delta)
        return None if stats.is_empty() else stats

    @classmethod
    def build_kv_connector_stats(cls, data: Optional[dict] = None) -> HyperRAGConnectorStats:
        return HyperRAGConnectorStats(data=dict(data or {}))

    def get_block_ids_with_load_errors(self) -> set:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed
