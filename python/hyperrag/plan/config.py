"""RAGOptimizeConfig: the user's workload and constraints, validated."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from ..costmodel import Efficiency
from ..hardware import DEFAULT_HOST, GB, AcceleratorSpec, HostSpec, get_gpu
from ..models import LLMModel
from .paradigms import Paradigm, get_paradigm

POLICIES = ("pgdsf", "gdsf", "lru", "lfu")
MAX_GPUS = 4
# Fraction of device memory usable by weights and KV (the rest: activations, allocator slack).
USABLE_MEMORY = 0.9


def _number(field_name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field_name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{field_name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _count(field_name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class RAGOptimizeConfig:
    """What to serve and under which constraints.

    paradigm: "hyperscale", "long_context", "iterative" or "rewriter_reranker".
    model: an LLMModel or preset name; None takes the paradigm's default.
    gpu: accelerator preset name or AcceleratorSpec (resolved to a spec).
    gpu_budget_gb: KV-cache capacity in GPU memory, all GPUs of a schedule together (GB, > 0).
    host_budget_gb: KV-cache capacity in host DRAM (GB, > 0).
    qps_target: queries/s per chip the schedule must sustain (None: no constraint).
    ttft_slo_s: TTFT limit in seconds (None: no limit).
    top_k, doc_tokens, question_tokens, output_tokens, num_documents,
    zipf_alpha: override the paradigm's defaults (None keeps them).
    policy: cache eviction policy for the controller ("pgdsf", "gdsf", "lru", "lfu").
    seed: seed for anything random downstream (the search itself is deterministic).
    """

    paradigm: Union[str, Paradigm] = "hyperscale"
    model: Union[LLMModel, str, None] = None
    gpu: Union[str, AcceleratorSpec] = "H100"
    gpu_budget_gb: float = 4.0
    host_budget_gb: float = 16.0
    qps_target: Optional[float] = None
    ttft_slo_s: Optional[float] = None
    top_k: Optional[int] = None
    doc_tokens: Optional[int] = None
    question_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    num_documents: Optional[int] = None
    zipf_alpha: Optional[float] = None
    policy: str = "pgdsf"
    seed: int = 0
    dtype_bytes: int = 2
    host: HostSpec = DEFAULT_HOST
    efficiency: Efficiency = field(default_factory=Efficiency)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        workload = get_paradigm(self.paradigm)
        set_("paradigm", workload.name)
        set_("model", LLMModel.from_name(workload.default_model if self.model is None else self.model))
        set_("gpu", get_gpu(self.gpu))
        _number("gpu_budget_gb", self.gpu_budget_gb)
        _number("host_budget_gb", self.host_budget_gb)
        for name in ("qps_target", "ttft_slo_s"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name))
        for name in ("top_k", "doc_tokens", "question_tokens", "output_tokens", "num_documents"):
            value = getattr(self, name)
            set_(name, getattr(workload, name) if value is None else _count(name, value))
        set_("zipf_alpha", workload.zipf_alpha if self.zipf_alpha is None else _number("zipf_alpha", self.zipf_alpha))
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is unknown; allowed: {', '.join(POLICIES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        _count("dtype_bytes", self.dtype_bytes)
        if not isinstance(self.host, HostSpec):
            raise ValueError(f"host must be a HostSpec, got {type(self.host).__name__}")
        if not isinstance(self.efficiency, Efficiency):
            raise ValueError(f"efficiency must be an Efficiency, got {type(self.efficiency).__name__}")
        tokens = self.top_k * workload.hops * self.doc_tokens + self.question_tokens + self.output_tokens
        if tokens > self.model.max_context:
            raise ValueError(
                f"a query of top_k={self.top_k} x hops={workload.hops} documents of doc_tokens={self.doc_tokens}, "
                f"question_tokens={self.question_tokens} and output_tokens={self.output_tokens} needs {tokens} tokens, "
                f"more than model {self.model.name}'s context window of {self.model.max_context}; lower those or "
                f"choose a model with a longer context")
        if self.host_budget_gb * GB > self.host.memory_bytes:
            raise ValueError(
                f"host_budget_gb={self.host_budget_gb} exceeds host {self.host.name}'s memory "
                f"({self.host.memory_bytes / GB:.0f} GB)"
            )
        weights_per_gpu = self.model.weight_bytes(self.dtype_bytes) / MAX_GPUS
        if weights_per_gpu > USABLE_MEMORY * self.gpu.memory_bytes:
            raise ValueError(
                f"model {self.model.name} ({self.model.weight_bytes(self.dtype_bytes) / GB:.0f} GB of weights) "
                f"does not fit on {MAX_GPUS} x {self.gpu.name} ({self.gpu.memory_bytes / GB:.0f} GB each, "
                f"{USABLE_MEMORY:.0%} usable); gpu must be one with more memory, or choose a smaller model"
            )

    @property
    def workload(self) -> Paradigm:
        """The paradigm's schema with this config's overrides applied."""
        return replace(get_paradigm(self.paradigm), top_k=self.top_k, doc_tokens=self.doc_tokens,
                       question_tokens=self.question_tokens, output_tokens=self.output_tokens,
                       num_documents=self.num_documents, zipf_alpha=self.zipf_alpha)
