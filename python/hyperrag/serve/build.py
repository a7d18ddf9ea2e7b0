"""Build a RAGServeController from the planner's config and chosen schedule.

The one wiring module: RAGOptimize.build_controller delegates here, passing the
paradigm's stage timings it computed, so this module never imports the
planner (the dependency runs plan -> serve only).
"""
from __future__ import annotations

import math
from typing import Optional

from hyperrag.serve.controller import RAGServeController
from hyperrag.serve.pipeline import PipelineTiming

ENGINES = ("simulated", "transformers")
GB = 1e9  # the config's budgets are in GB, as the planner reads them
# Simulated KV moves real blocks, scaled down so that all pools together stay this small.
SIM_POOL_BYTES = 64 << 20
KV_LINK = "pcie"  # host -> gpu loads of cached KV
RETRIEVAL_STAGES = 4  # IVF probes split into this many stages, as RAGCache does


def build_controller(config, schedule, engine: str = "simulated", *, stage_seconds: Optional[dict] = None,
                     **kwargs) -> RAGServeController:
    """A controller serving ``config``'s workload with ``schedule``'s resources.

    engine: "simulated" (times from the cost model, all cache operations
    real), "transformers" (needs ``model_path=``), or a TransformersEngine
    already loaded (several controllers then share one model in memory; its
    forward passes are serialized by the engine). stage_seconds: per-query
    seconds of the paradigm's "retrieval", "rewriter" and "reranker" stages
    (RAGOptimize.build_controller computes them; None: no modelled stages).
    Keyword arguments: ``use_cache`` (False: no KV reuse, the baseline),
    ``reorder``, ``speculative``, ``speculative_pool``, ``starvation_window_s``,
    ``doc_order`` ("retrieval" | "cache_aware"), ``admission`` ("all" |
    "reused_prefix"), ``system_prompt``, ``policy``, ``gpu_bytes`` /
    ``host_bytes`` (override the budgets; 0 means no such tier),
    ``storage_scale``, ``block_bytes``, ``remote`` (a shared tier: a
    RedisKVStore, a DiskKVStore or a redis:// URL; real engines only),
    ``reuse`` ("exact" | "approximate", with ``recompute_policy`` and
    ``recompute_budget``: see RAGServeController; transformers engine only),
    ``metrics_port`` (serve Prometheus metrics on this port: the server is
    ``controller.metrics_server``); the transformers engine also takes
    ``model_path`` (a local Hugging Face directory or "smollm2"),
    ``engine_kwargs`` (passed to TransformersEngine) and
    ``default_output_tokens`` (greedy answer length when a Query does not set
    it; default the config's). Its cache stores the engine's real KV bytes
    (storage_scale 1) and node sizes follow the engine's model, whatever model
    the config names.
    """
    from hyperrag.engines.base import Engine

    metrics_port = kwargs.pop("metrics_port", None)
    if metrics_port is not None and (isinstance(metrics_port, bool) or not isinstance(metrics_port, int)
                                     or not 0 <= metrics_port <= 65535):
        raise ValueError(f"metrics_port must be an int in [0, 65535] (0: any free port), got {metrics_port!r}")
    if isinstance(kwargs.get("remote"), str):
        from hyperrag.cache.redis_store import RedisKVStore

        kwargs["remote"] = RedisKVStore(kwargs["remote"])
    if isinstance(engine, Engine):
        controller = _build_transformers(config, schedule, loaded=engine, **kwargs)
    elif engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is unknown; allowed: {', '.join(ENGINES)} or a TransformersEngine")
    elif engine == "transformers":
        controller = _build_transformers(config, schedule, **kwargs)
    else:
        controller = _build_simulated(config, schedule, stage_seconds or {}, **kwargs)
    if metrics_port is not None:
        from hyperrag.serve.prometheus import serve_metrics

        controller.metrics_server = serve_metrics(controller, metrics_port)
    return controller


def _controller_options(kwargs: dict) -> dict:
    return {k: kwargs.pop(k) for k in ("reorder", "speculative", "speculative_pool", "starvation_window_s",
                                       "doc_order", "admission", "system_prompt", "remote", "reuse", "recompute_policy",
                                       "recompute_budget") if k in kwargs}


def _budget(kwargs: dict, name: str, default_bytes: float) -> int:
    value = kwargs.pop(name, None)
    if value is None:
        return int(default_bytes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of bytes >= 0 (0: no such tier), got {value!r}")
    return value


def _make_cache(config, profile, simulated: bool, kwargs: dict):
    from hyperrag.cache import KVCache

    gpu = _budget(kwargs, "gpu_bytes", config.gpu_budget_gb * GB)
    host = _budget(kwargs, "host_bytes", config.host_budget_gb * GB)
    capacities = {tier: nbytes for tier, nbytes in (("gpu", gpu), ("host", host)) if nbytes > 0}
    if not capacities:
        raise ValueError("gpu_bytes and host_bytes are both 0: no tier to cache in; pass use_cache=False "
                         "to serve without a cache")
    policy = kwargs.pop("policy", None) or config.policy
    scale = kwargs.pop("storage_scale", None)
    if scale is None:
        scale = max(1, math.ceil((gpu + host) / SIM_POOL_BYTES)) if simulated else 1
    extra = {"block_bytes": kwargs.pop("block_bytes")} if "block_bytes" in kwargs else {}
    return KVCache(capacities=capacities, policy=policy, profile=profile, storage_scale=scale, **extra)


def _llm_cost(config, schedule):
    from hyperrag.costmodel import LLMCostModel

    return LLMCostModel(config.model, config.gpu, schedule.num_gpus, dtype_bytes=config.dtype_bytes,
                        efficiency=config.efficiency, host=config.host)


# T(cached, new) grid for PGDSF: spans single short documents to long contexts.
PROFILE_CACHED = (0, 256, 1024, 4096, 16384, 65536)
PROFILE_NEW = (1, 32, 128, 512, 2048, 8192, 32768)


def _cost_profile(cost):
    from hyperrag.cache import CostProfile

    cached, new, seconds = cost.profile_grid(PROFILE_CACHED, PROFILE_NEW)
    return CostProfile(list(cached), list(new), [list(row) for row in seconds])


def _timing(config, stages: dict, cost) -> PipelineTiming:
    """Stage times of the paradigm on the schedule (planner's cost models); the search is split
    into stages so that speculation can start on interim results."""
    retrieval = stages.get("retrieval", 0.0)
    return PipelineTiming(
        retrieval_s=retrieval,
        retrieval_stages=RETRIEVAL_STAGES if retrieval > 0 else 1,
        rewriter_s=stages.get("rewriter", 0.0),
        reranker_s=stages.get("reranker", 0.0),
        hop_decode_tokens=config.workload.hop_decode_tokens,
        kv_load_seconds=lambda nbytes: cost.kv_load_seconds(nbytes, KV_LINK),
        seed=int(config.seed),
    )


def _build_simulated(config, schedule, stages: dict, **kwargs) -> RAGServeController:
    from hyperrag.engines.simulated import SimulatedEngine

    options = _controller_options(kwargs)
    use_cache = kwargs.pop("use_cache", True)
    cost = _llm_cost(config, schedule)
    kvb = config.model.kv_bytes_per_token(config.dtype_bytes)
    engine = SimulatedEngine(cost, kvb, model_name=config.model.name, question_tokens=config.question_tokens,
                             max_context=config.model.max_context)
    cache = _make_cache(config, _cost_profile(cost), True, kwargs) if use_cache else None
    timing = kwargs.pop("timing", None) or _timing(config, stages, cost)
    if kwargs:
        raise TypeError(f"build_controller got unexpected arguments: {', '.join(sorted(kwargs))}")
    return RAGServeController(engine, cache, timing, config=config, schedule=schedule,
                              default_output_tokens=config.output_tokens, insert_tier=_fastest(cache), **options)


def _fastest(cache) -> str:
    return cache.tiers[0] if cache is not None else "gpu"


def _engine_cost(config, engine):
    """Cost model of the model the engine really runs, on the device it runs on, so
    that PGDSF ranks documents by this engine's prefill cost rather than by the
    planner's preset (which may be another model on another accelerator)."""
    from hyperrag.costmodel import LLMCostModel
    from hyperrag.hardware import cpu_accelerator
    from hyperrag.models import LLMModel

    model = LLMModel.from_hf_config(engine.model.config.get_text_config(decoder=True))
    device = cpu_accelerator() if engine.device.type == "cpu" else config.gpu
    return LLMCostModel(model, device, 1, dtype_bytes=engine.model.dtype.itemsize, efficiency=config.efficiency)


def _build_transformers(config, schedule, loaded=None, **kwargs) -> RAGServeController:
    from hyperrag.engines.transformers_engine import TransformersEngine

    if loaded is not None:
        if not isinstance(loaded, TransformersEngine):
            raise ValueError(f"engine must be 'simulated', 'transformers' or a TransformersEngine, "
                             f"got a {type(loaded).__name__}")
        for name in ("model_path", "engine_kwargs"):
            if name in kwargs:
                raise TypeError(f"build_controller got {name} with an engine already loaded")
        engine = loaded
    else:
        model_path = kwargs.pop("model_path", None)
        if not model_path or not isinstance(model_path, str):
            raise ValueError("engine='transformers' needs model_path= (a local Hugging Face directory or "
                             f"'smollm2'), got {model_path!r}")
        engine = TransformersEngine(model_path=model_path, **kwargs.pop("engine_kwargs", {}))
    options = _controller_options(kwargs)
    use_cache = kwargs.pop("use_cache", True)
    cache = None
    if use_cache:
        cache = _make_cache(config, _cost_profile(_engine_cost(config, engine)), False, kwargs)
    # Real queries run one at a time on the one engine: no modelled retrieval stages.
    timing = kwargs.pop("timing", None) or PipelineTiming(seed=int(config.seed))
    output_tokens = kwargs.pop("default_output_tokens", config.output_tokens)
    if kwargs:
        raise TypeError(f"build_controller got unexpected arguments: {', '.join(sorted(kwargs))}")
    return RAGServeController(engine, cache, timing, config=config, schedule=schedule,
                              default_output_tokens=output_tokens, insert_tier=_fastest(cache), **options)
