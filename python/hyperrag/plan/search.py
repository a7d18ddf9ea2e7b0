"""Pareto schedule search over GPU count x batch x cache hit-rate target x placement.

How one candidate is costed (all times are for one batch of b queries):

* Cache: documents are drawn with Zipf(alpha) popularity from num_documents.
  A hit-rate target h (fraction of document tokens served from cache) needs
  the hottest C documents cached, the smallest C whose popularity mass is >= h;
  it fits when C x doc_tokens x KV bytes/token <= gpu_budget + host_budget.
  Hits on documents that fit in gpu_budget cost nothing to load; the rest of
  the hits are loaded from host memory over PCIe, pipelined layer by layer with
  the prefill: max(prefill, load) + load / layers. This assumes a document's
  KV is reusable wherever it appears; exact-prefix reuse hits less, and the
  controller measures the real rate.
* Per retrieval pass (hops of them): query encoder, vector search on the host
  CPU, cross-encoder reranking; a rewriter LLM runs once before the first
  pass. Prefill of pass i computes the missed (1 - h) of its documents (and the
  question, first pass) on top of the request's earlier KV plus the hits;
  iterative RAG decodes hop_decode_tokens between passes.
* Placements (after RAGO): "collocated": auxiliary models, prefill and decode
  time-share all g chips (tensor parallel); a new prefill waits on average half
  a decode step. Decode uses continuous batching: up to 256 sequences, as many
  as the memory left after weights, GPU cache and prompt KV holds. "disaggregated": auxiliary models + prefill on g/2 chips,
  decode on the other g/2; the prompt's KV moves between the groups (NVLink, else
  PCIe); no interference. "hybrid": auxiliary models run on the host CPU beside
  retrieval; prefill and decode time-share the g chips (needs auxiliary models).
* Throughput: stages on different resources overlap across batches, so a
  replica finishes a batch every max(busy time of each resource) seconds;
  QPS/chip = b / that / g. TTFT = batch-forming wait (b - 1) / (2 x replica
  QPS) + retrieval + auxiliary models + prefill (with KV loads) + inter-hop
  decode + interference.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..costmodel import (EncoderCostModel, LLMCostModel, RerankerCostModel, RetrievalCostModel,
                         RewriterCostModel, check_tensor_parallel)
from ..hardware import GB
from ..models import LLMModel
from ..serve.build import build_controller
from .config import USABLE_MEMORY, RAGOptimizeConfig

GPU_COUNTS = (1, 2, 4)
BATCH_SIZES = (1, 2, 4, 8, 16)
HIT_RATES = (0.0, 0.3, 0.6, 0.9)
PLACEMENTS = ("collocated", "disaggregated", "hybrid")
RERANKER_LAYERS = 24  # a large cross-encoder (BERT-large shape)
MAX_DECODE_SEQS = 256  # concurrent decoding sequences per replica (vLLM's default max_num_seqs)


@dataclass(frozen=True)
class StageTimes:
    """Seconds per batch on the critical path (TTFT parts) and of decode."""

    batch_wait_s: float = 0.0
    retrieval_s: float = 0.0
    aux_s: float = 0.0
    prefill_s: float = 0.0
    kv_load_s: float = 0.0
    hop_decode_s: float = 0.0
    interference_s: float = 0.0
    decode_s: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """One point of the schedule space and its modelled performance.

    fits: False when the schedule is infeasible (``reason`` says why); then
    ttft_s and qps_per_chip are inf and 0. cache_gb: KV cache the hit-rate
    target needs; memory_per_gpu_gb: weights + GPU cache + working KV + auxiliary
    models on the most loaded chip.
    """

    num_gpus: int
    batch_size: int
    hit_rate_target: float
    placement: str
    ttft_s: float = math.inf
    qps_per_chip: float = 0.0
    fits: bool = False
    reason: str = ""
    cache_gb: float = 0.0
    memory_per_gpu_gb: float = 0.0
    stages: StageTimes = StageTimes()

    def dominates(self, other: "Schedule") -> bool:
        """At least as good on TTFT (lower) and QPS/chip (higher), strictly better on one."""
        return (self.ttft_s <= other.ttft_s and self.qps_per_chip >= other.qps_per_chip
                and (self.ttft_s < other.ttft_s or self.qps_per_chip > other.qps_per_chip))

    def label(self) -> str:
        return f"g{self.num_gpus} b{self.batch_size} h{self.hit_rate_target:.0%} {self.placement}"


def pareto_frontier(candidates) -> List[Schedule]:
    """Fitting candidates no other fitting candidate dominates, by TTFT then -QPS/chip.

    Sort by (TTFT, -QPS); a point is on the frontier iff its QPS beats every
    point before it (ties in both metrics are kept: neither dominates)."""
    pts = sorted((c for c in candidates if c.fits), key=lambda c: (c.ttft_s, -c.qps_per_chip))
    frontier: List[Schedule] = []
    for c in pts:
        if not frontier or c.qps_per_chip > frontier[-1].qps_per_chip or (
                c.ttft_s == frontier[-1].ttft_s and c.qps_per_chip == frontier[-1].qps_per_chip):
            frontier.append(c)
    return frontier


@lru_cache(maxsize=16)
def _zipf_mass(num_documents: int, alpha: float) -> np.ndarray:
    """Cumulative popularity share of the i most popular documents, i = 1..N."""
    weights = np.arange(1, num_documents + 1, dtype=np.float64) ** -alpha
    mass = np.cumsum(weights)
    return mass / mass[-1]


def documents_for_hit_rate(hit_rate: float, num_documents: int, alpha: float) -> int:
    """Fewest most-popular documents whose Zipf(alpha) mass reaches ``hit_rate``."""
    if hit_rate <= 0:
        return 0
    mass = _zipf_mass(num_documents, alpha)
    return int(min(np.searchsorted(mass, hit_rate - 1e-12) + 1, num_documents))


def hit_rate_of(documents: int, num_documents: int, alpha: float) -> float:
    """Zipf(alpha) mass of the ``documents`` most popular ones."""
    if documents <= 0:
        return 0.0
    return float(_zipf_mass(num_documents, alpha)[min(documents, num_documents) - 1])


class _Costs:
    """Cost models of one config, memoized per chip count and device."""

    def __init__(self, config: RAGOptimizeConfig):
        self.config = config
        self.workload = config.workload
        self._llm: Dict[Tuple[str, int, bool], LLMCostModel] = {}

    def llm(self, model: LLMModel, num_gpus: int, on_host: bool = False) -> LLMCostModel:
        key = (model.name, num_gpus, on_host)
        if key not in self._llm:
            c = self.config
            device = c.host.as_accelerator() if on_host else c.gpu
            self._llm[key] = LLMCostModel(model, device, num_gpus, c.dtype_bytes, c.efficiency, c.host)
        return self._llm[key]

    def retrieval_seconds(self, batch: int) -> float:
        """One retrieval pass for ``batch`` queries on the host (0 when the paradigm has no retrieval)."""
        w = self.workload
        if w.retrieval is None:
            return 0.0
        return RetrievalCostModel(w.retrieval, w.num_vectors, w.vector_dim, nprobe=w.nprobe, pq_m=w.pq_m,
                                  host=self.config.host).search_seconds(batch)

    def aux_seconds(self, batch: int, num_gpus: int, on_host: bool) -> Dict[str, float]:
        """Encoder (per pass), rewriter (once) and reranker (per pass) seconds for a batch.

        On GPUs the small encoders run data-parallel (ceil(batch / g) per chip)
        and the rewriter tensor-parallel over the g chips (on one chip if its
        heads do not split); on the host everything runs on the CPU cores."""
        w, c = self.workload, self.config
        device = c.host if on_host else c.gpu
        per_chip = batch if on_host else math.ceil(batch / num_gpus)
        out = {"encoder": 0.0, "rewriter": 0.0, "reranker": 0.0}
        if w.encoder_params:
            enc = EncoderCostModel(w.encoder_params, device, efficiency=c.efficiency)
            out["encoder"] = w.hops * enc.seconds(w.question_tokens, per_chip)
        if w.rewriter_model:
            rw_model = LLMModel.from_name(w.rewriter_model)
            try:
                check_tensor_parallel(rw_model, num_gpus)
                rw_gpus = 1 if on_host else num_gpus
            except ValueError:
                rw_gpus = 1
            out["rewriter"] = RewriterCostModel(self.llm(rw_model, rw_gpus, on_host),
                                                w.rewriter_output_tokens).seconds(w.question_tokens, batch)
        if w.reranker_params:
            enc = EncoderCostModel(w.reranker_params, device, num_layers=RERANKER_LAYERS, efficiency=c.efficiency)
            rr = RerankerCostModel(enc, w.rerank_candidates)
            out["reranker"] = w.hops * rr.seconds(w.question_tokens, c.doc_tokens, per_chip)
        return out

    def aux_weight_bytes(self, num_gpus: int) -> float:
        """Per-chip bytes of auxiliary model weights when they run on the GPUs."""
        w, d = self.workload, self.config.dtype_bytes
        total = (w.encoder_params + w.reranker_params) * d
        if w.rewriter_model:
            total += LLMModel.from_name(w.rewriter_model).weight_bytes(d) / num_gpus
        return total


def evaluate(config: RAGOptimizeConfig, num_gpus: int, batch_size: int, hit_rate: float, placement: str,
             costs: Optional[_Costs] = None) -> Schedule:
    """Cost one schedule (see the module docstring for the model)."""
    costs = costs or _Costs(config)
    w, m, c = costs.workload, config.model, config
    g, b, h = num_gpus, batch_size, hit_rate
    key = dict(num_gpus=g, batch_size=b, hit_rate_target=h, placement=placement)
    kvb = m.kv_bytes_per_token(c.dtype_bytes)
    doc_bytes = c.doc_tokens * kvb

    # Cache sizing from the popularity curve.
    docs_needed = documents_for_hit_rate(h, c.num_documents, c.zipf_alpha)
    cache_bytes = docs_needed * doc_bytes
    key["cache_gb"] = cache_bytes / GB
    if cache_bytes > (c.gpu_budget_gb + c.host_budget_gb) * GB:
        return Schedule(**key, reason=f"hit rate {h:.0%} needs {cache_bytes / GB:.1f} GB of KV cache > "
                                       f"gpu_budget_gb + host_budget_gb = {c.gpu_budget_gb + c.host_budget_gb:g}")
    gpu_hit = min(h, hit_rate_of(int(c.gpu_budget_gb * GB // doc_bytes), c.num_documents, c.zipf_alpha))
    host_hit = h - gpu_hit

    # Chip groups.
    if placement == "disaggregated":
        if g < 2:
            return Schedule(**key, reason="disaggregated needs >= 2 GPUs")
        prefill_g = decode_g = g // 2
    elif placement == "hybrid" and not w.has_aux_models:
        return Schedule(**key, reason=f"hybrid moves auxiliary models to the host; {w.name} has none")
    else:
        prefill_g = decode_g = g
    try:
        check_tensor_parallel(m, prefill_g)
    except ValueError as exc:
        return Schedule(**key, reason=str(exc))
    aux_on_host = placement == "hybrid"

    # Memory per chip. The prefill group holds weights, the GPU cache, auxiliary
    # models and the batch's prompt KV; decode sequences fill what is left.
    weights = m.weight_bytes(c.dtype_bytes)
    doc_tokens = w.top_k * c.doc_tokens
    context = c.question_tokens + w.hops * doc_tokens + (w.hops - 1) * w.hop_decode_tokens
    seq_bytes = (context + c.output_tokens) * kvb
    aux_bytes = 0.0 if aux_on_host else costs.aux_weight_bytes(prefill_g) * prefill_g
    static = weights + c.gpu_budget_gb * GB + aux_bytes + b * context * kvb
    usable = USABLE_MEMORY * c.gpu.memory_bytes
    key["memory_per_gpu_gb"] = static / prefill_g / GB
    if static > usable * prefill_g:
        return Schedule(**key, reason=f"needs {key['memory_per_gpu_gb']:.1f} GB per {c.gpu.name} > "
                                      f"{usable / GB:.1f} GB usable")
    if placement == "disaggregated":
        free = usable * decode_g - weights
    else:
        free = usable * g - static
    decode_seqs = min(MAX_DECODE_SEQS, int(free // seq_bytes))
    if decode_seqs < b:
        return Schedule(**key, reason=f"room for {max(decode_seqs, 0)} decoding sequences < batch {b}")

    # Stage times for one batch.
    pre = costs.llm(m, prefill_g)
    dec = costs.llm(m, decode_g)
    retrieval = w.hops * costs.retrieval_seconds(b)
    aux = sum(costs.aux_seconds(b, prefill_g, aux_on_host).values())
    hits = round(h * doc_tokens)
    host_hits = round(host_hit * doc_tokens)
    prefill = kv_load = hop_decode = 0.0
    prior = 0
    for hop in range(w.hops):
        new = doc_tokens - hits + (c.question_tokens if hop == 0 else 0)
        t_prefill = pre.prefill_seconds(new, prior + hits, b)
        t_load = pre.kv_load_seconds(b * host_hits * kvb, "pcie")
        prefill += max(t_prefill, t_load) + t_load / m.num_layers
        kv_load += t_load
        prior += doc_tokens + (c.question_tokens if hop == 0 else 0)
        if hop < w.hops - 1:
            hop_decode += pre.decode_seconds(prior, w.hop_decode_tokens, b)
            prior += w.hop_decode_tokens
    # Continuous batching: decode_seqs sequences decode together; a query costs
    # the group 1 / decode_seqs of their decode time.
    decode = b * dec.decode_seconds(context, c.output_tokens, decode_seqs) / decode_seqs

    if placement == "disaggregated":
        link = "nvlink" if c.gpu.nvlink_bandwidth else "pcie"
        transfer = dec.kv_load_seconds(b * context * kvb, link)
        busy = (aux + prefill + hop_decode, decode + transfer, retrieval)
        interference = 0.0
    else:
        gpu_busy = prefill + hop_decode + decode + (0.0 if aux_on_host else aux)
        busy = (gpu_busy, retrieval + (aux if aux_on_host else 0.0))
        interference = 0.5 * dec.decode_seconds(context, 1, decode_seqs)
    replica_qps = b / max(busy)
    wait = (b - 1) / (2 * replica_qps)
    ttft = wait + retrieval + aux + prefill + hop_decode + interference
    stages = StageTimes(wait, retrieval, aux, prefill, kv_load, hop_decode, interference, decode)
    return Schedule(**key, ttft_s=ttft, qps_per_chip=replica_qps / g, fits=True, stages=stages)


@dataclass(frozen=True)
class OptimizeResult:
    """best: the chosen schedule; frontier: Pareto-optimal fitting schedules by
    TTFT; candidates: all 180 evaluated; meets_target: whether best satisfies
    qps_target and ttft_slo_s (if not, best is the frontier point with the
    highest QPS/chip among those within the SLO, or overall)."""

    config: RAGOptimizeConfig
    best: Schedule
    frontier: Tuple[Schedule, ...]
    candidates: Tuple[Schedule, ...]
    meets_target: bool
    search_seconds: float

    def summary(self) -> str:
        b = self.best
        lines = [f"TTFT={b.ttft_s * 1e3:.1f}ms  QPS/chip={b.qps_per_chip:.1f}  hit_rate={b.hit_rate_target:.1%}",
                 f"  gpus={b.num_gpus}  batch={b.batch_size}  pareto_size={len(self.frontier)}"]
        if not self.meets_target:
            lines.append(f"  target not met: {_target_text(self.config)}; showing the highest-QPS/chip frontier point")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def row(s: Schedule) -> dict:
            d = asdict(s)
            d["ttft_s"] = d["ttft_s"] if s.fits else None
            return d
        return {"paradigm": self.config.paradigm, "model": self.config.model.name, "gpu": self.config.gpu.name,
                "meets_target": self.meets_target, "search_seconds": self.search_seconds,
                "best": row(self.best), "frontier": [row(s) for s in self.frontier],
                "candidates": [row(s) for s in self.candidates]}


def _target_text(config: RAGOptimizeConfig) -> str:
    parts = []
    if config.qps_target is not None:
        parts.append(f"qps_target={config.qps_target:g}/chip")
    if config.ttft_slo_s is not None:
        parts.append(f"ttft_slo_s={config.ttft_slo_s:g}")
    return ", ".join(parts)


class RAGOptimize:
    """Schedule search for a RAGOptimizeConfig (the quickstart's steps 1 and 2)."""

    def __init__(self, config: RAGOptimizeConfig):
        if not isinstance(config, RAGOptimizeConfig):
            raise ValueError(f"config must be a RAGOptimizeConfig, got {type(config).__name__}")
        self.config = config
        self.result: Optional[OptimizeResult] = None

    def candidates(self) -> List[Schedule]:
        """All 180 schedules, costed, in enumeration order."""
        costs = _Costs(self.config)
        return [evaluate(self.config, g, b, h, p, costs)
                for g in GPU_COUNTS for b in BATCH_SIZES for h in HIT_RATES for p in PLACEMENTS]

    def optimize(self) -> OptimizeResult:
        """Evaluate every candidate, keep the Pareto frontier, and pick the
        lowest-TTFT frontier schedule meeting qps_target and ttft_slo_s.
        Raises ValueError when no candidate fits in memory."""
        start = time.perf_counter()
        cands = self.candidates()
        frontier = pareto_frontier(cands)
        if not frontier:
            reasons = sorted({c.reason for c in cands})
            raise ValueError(f"no schedule fits; reasons: {'; '.join(reasons[:4])}")
        c = self.config
        within_slo = [s for s in frontier if c.ttft_slo_s is None or s.ttft_s <= c.ttft_slo_s]
        ok = [s for s in within_slo if c.qps_target is None or s.qps_per_chip >= c.qps_target]
        if ok:
            best = min(ok, key=lambda s: (s.ttft_s, -s.qps_per_chip))
        else:
            best = max(within_slo or frontier, key=lambda s: (s.qps_per_chip, -s.ttft_s))
        self.result = OptimizeResult(c, best, tuple(frontier), tuple(cands), bool(ok),
                                     time.perf_counter() - start)
        return self.result

    def build_controller(self, engine: str = "simulated", **kwargs):
        """A RAGServeController for the best schedule (runs optimize() first if needed), its
        retrieval, rewriter and reranker stages timed by this config's cost models."""
        best = (self.result or self.optimize()).best
        stages = paradigm_stage_seconds(self.config, best.num_gpus, best.placement)
        return build_controller(self.config, best, engine=engine, stage_seconds=stages, **kwargs)


def paradigm_stage_seconds(config: RAGOptimizeConfig, num_gpus: int = 1, placement: str = "collocated") -> Dict[str, float]:
    """Per-query (batch 1) seconds of the non-LLM stages, per call:
    "retrieval" (query encoding + one vector search pass), "rewriter" (once per
    query), "reranker" (one pass). For the serving controller's pipeline timing."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    costs = _Costs(config)
    aux = costs.aux_seconds(1, num_gpus, placement == "hybrid")
    hops = costs.workload.hops
    return {"retrieval": costs.retrieval_seconds(1) + aux["encoder"] / hops,
            "rewriter": aux["rewriter"], "reranker": aux["reranker"] / hops}
