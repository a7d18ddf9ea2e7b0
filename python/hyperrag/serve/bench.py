"""Benchmark harness shared by ``hyperrag bench`` and bench/bench_*.py.

Every figure comes from a controller run on the simulated engine (times from
the cost model, cache operations real). Each experiment repeats over seeds
and reports medians; ratios are taken within one seed, side by side.
"""
from __future__ import annotations

import json
import math
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from hyperrag import progress
from hyperrag import workloads as W
from hyperrag.serve.build import GB

POLICIES = ("pgdsf", "gdsf", "lru", "lfu")
CAPACITY_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
RESULTS_DIR = Path(__file__).resolve().parents[3] / "bench" / "results"
# Benchmarks run many controllers: their pools hold fewer real bytes (smaller blocks) than
# build_controller's default so a sweep stays fast; no reported figure depends on it.
BENCH_POOL_BYTES = 8 << 20
BENCH_BLOCK_BYTES = 4 << 10


def plan(paradigm: str, seed: int = 0):
    """The planner for the paradigm's default config, its best schedule found."""
    from hyperrag.plan import RAGOptimize, RAGOptimizeConfig

    rago = RAGOptimize(RAGOptimizeConfig(paradigm=paradigm, seed=seed))
    rago.optimize()
    return rago


def workload(config, num_queries: int, seed: int, qps: Optional[float] = None, zipf_alpha: Optional[float] = None):
    """Queries shaped like ``config``'s paradigm (with its overrides), Poisson at ``qps``."""
    return W.generate(W.paradigm_spec(config.workload, num_queries=num_queries, seed=seed, qps=qps,
                                      zipf_alpha=zipf_alpha))


def arrival_rate(rago, queries, load: float) -> float:
    """Poisson rate at which the no-cache baseline's busiest resource is ``load`` busy.

    Engine work of a query = sum over hops of a full prefill of its prompt so
    far; retrieval work = hops x search time / workers (cost model figures).
    """
    if not 0 < load < 1:
        raise ValueError(f"load must be in (0, 1), got {load!r}")
    ctrl = rago.build_controller(use_cache=False)
    engine, timing = ctrl.engine, ctrl.timing
    engine_s = retrieval_s = 0.0
    for q in queries:
        for end in q.hop_bounds():
            engine_s += engine.prefill_seconds(0, sum(q.doc_tokens[:end]) + engine.question_tokens)
        retrieval_s += len(q.hop_bounds()) * timing.retrieval_s / timing.retrieval_workers
    busiest = max(engine_s, retrieval_s) / len(queries)
    return load / busiest


def run(rago, queries, **controller_kwargs) -> Dict[str, float]:
    """Serve ``queries`` on a fresh controller; its metrics plus the wall time of the run."""
    config = rago.config
    if controller_kwargs.get("use_cache", True):
        gpu, host = (controller_kwargs.get(f"{t}_bytes") for t in ("gpu", "host"))
        budget = (config.gpu_budget_gb * GB if gpu is None else gpu) + (config.host_budget_gb * GB if host is None else host)
        controller_kwargs.setdefault("storage_scale", max(1, math.ceil(budget / BENCH_POOL_BYTES)))
        controller_kwargs.setdefault("block_bytes", BENCH_BLOCK_BYTES)
    ctrl = rago.build_controller(**controller_kwargs)
    t0 = time.perf_counter()
    ctrl.process_batch(queries)
    out = ctrl.metrics().as_dict()
    out["wall_s"] = time.perf_counter() - t0
    return out


def median_rows(runs: List[Dict[str, float]], keys: Iterable[str]) -> Dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in keys}


# --------------------------------------------------------------- experiments
def bench_paradigms(paradigms: Sequence[str], num_queries: int, repeats: int = 3, load: float = 0.6,
                    zipf_alpha: float = 1.1, show_progress: bool = True) -> List[dict]:
    """Baseline (no cache, no reordering, no speculation) vs HyperRAG per paradigm."""
    rows = []
    with progress.bar("paradigms", len(paradigms) * repeats * 2, show_progress) as bar:
        for p in paradigms:
            rago = plan(p)
            config, schedule = rago.config, rago.result.best
            per_seed = []
            for seed in range(repeats):
                qs0 = workload(config, num_queries, seed, zipf_alpha=zipf_alpha)
                qps = arrival_rate(rago, qs0, load)
                qs = workload(config, num_queries, seed, qps=qps, zipf_alpha=zipf_alpha)
                bar.describe(f"{p} seed {seed}: baseline")
                base = run(rago, qs, use_cache=False, reorder=False, speculative=False)
                bar.advance()
                bar.describe(f"{p} seed {seed}: hyperrag")
                hyper = run(rago, qs)
                bar.advance()
                per_seed.append({
                    "qps": qps,
                    "baseline_mean_ttft_s": base["mean_ttft_s"], "baseline_p90_ttft_s": base["p90_ttft_s"],
                    "hyperrag_mean_ttft_s": hyper["mean_ttft_s"], "hyperrag_p90_ttft_s": hyper["p90_ttft_s"],
                    "hit_rate": hyper["hit_rate"], "token_hit_rate": hyper["token_hit_rate"],
                    "query_token_hit_rate": hyper["query_token_hit_rate"],
                    "speedup_mean": base["mean_ttft_s"] / hyper["mean_ttft_s"],
                    "speedup_p90": base["p90_ttft_s"] / hyper["p90_ttft_s"],
                    "speculations": hyper["speculations"], "speculations_kept": hyper["speculations_kept"],
                    "wall_s": base["wall_s"] + hyper["wall_s"],
                })
            row = {"paradigm": p, "model": config.model.name, "gpu": _gpu_name(config),
                   "num_gpus": schedule.num_gpus, "queries": num_queries, "repeats": repeats, "load": load}
            row.update(median_rows(per_seed, per_seed[0].keys()))
            rows.append(row)
    return rows


def bench_policies(paradigm: str, num_queries: int, repeats: int = 3, load: float = 0.6,
                   fractions: Sequence[float] = CAPACITY_FRACTIONS, policies: Sequence[str] = POLICIES,
                   zipf_alpha: float = 1.1, show_progress: bool = True) -> List[dict]:
    """Each policy at GPU+host capacities that are fractions of the workload's working set.

    The GPU:host split follows the config's budgets. The working set is the
    KV of every distinct document path of the trace (an unbounded tree).
    """
    rago = plan(paradigm)
    config = rago.config
    kvb = config.model.kv_bytes_per_token()
    gpu_share = config.gpu_budget_gb / (config.gpu_budget_gb + config.host_budget_gb)
    runs: Dict[tuple, List[dict]] = {}
    with progress.bar("policies", repeats * len(fractions) * len(policies), show_progress) as bar:
        for seed in range(repeats):
            qs0 = workload(config, num_queries, seed, zipf_alpha=zipf_alpha)
            qps = arrival_rate(rago, qs0, load)
            qs = workload(config, num_queries, seed, qps=qps, zipf_alpha=zipf_alpha)
            working_set = W.working_set_bytes(qs, kvb)
            for f in fractions:
                for policy in policies:
                    bar.describe(f"seed {seed} {f:.0%} {policy}")
                    total_bytes = f * working_set
                    m = run(rago, qs, policy=policy, gpu_bytes=int(total_bytes * gpu_share),
                            host_bytes=int(total_bytes * (1 - gpu_share)))
                    m["working_set_gib"] = working_set / (1 << 30)
                    runs.setdefault((f, policy), []).append(m)
                    bar.advance()
    keys = ("token_hit_rate", "hit_rate", "saved_prefill_s", "mean_ttft_s", "p90_ttft_s", "working_set_gib")
    rows = []
    for (f, policy), ms in runs.items():
        row = {"paradigm": paradigm, "capacity_fraction": f, "policy": policy, "queries": num_queries,
               "repeats": repeats}
        row.update(median_rows(ms, keys))
        rows.append(row)
    return rows


ABLATIONS = {
    "hyperrag": dict(),
    "no_reorder": dict(reorder=False),
    "no_speculation": dict(speculative=False),
    "no_reorder_no_speculation": dict(reorder=False, speculative=False),
}


def bench_ablations(paradigms: Sequence[str], num_queries: int, repeats: int = 3,
                    loads: Sequence[float] = (0.5, 0.9), zipf_alpha: float = 1.1,
                    show_progress: bool = True) -> List[dict]:
    """TTFT with cache-aware reordering and speculative pipelining each on and off (cache on)."""
    rows = []
    with progress.bar("ablations", len(paradigms) * len(loads) * repeats * len(ABLATIONS), show_progress) as bar:
        for p in paradigms:
            rago = plan(p)
            config = rago.config
            for load in loads:
                per: Dict[str, List[dict]] = {name: [] for name in ABLATIONS}
                for seed in range(repeats):
                    qs0 = workload(config, num_queries, seed, zipf_alpha=zipf_alpha)
                    qps = arrival_rate(rago, qs0, load)
                    qs = workload(config, num_queries, seed, qps=qps, zipf_alpha=zipf_alpha)
                    full = None
                    for name, kw in ABLATIONS.items():
                        bar.describe(f"{p} load {load} seed {seed}: {name}")
                        m = run(rago, qs, **kw)
                        full = full or m
                        m["ttft_vs_hyperrag"] = m["mean_ttft_s"] / full["mean_ttft_s"]
                        per[name].append(m)
                        bar.advance()
                for name, ms in per.items():
                    row = {"paradigm": p, "load": load, "variant": name, "queries": num_queries, "repeats": repeats}
                    row.update(median_rows(ms, ("mean_ttft_s", "p90_ttft_s", "ttft_vs_hyperrag", "hit_rate",
                                                "speculations", "speculations_kept", "wasted_prefill_s")))
                    rows.append(row)
    return rows


# ------------------------------------------------------------------- output
def _gpu_name(config) -> str:
    gpu = getattr(config, "gpu", "")
    return getattr(gpu, "name", str(gpu))


def print_table(title: str, rows: List[dict], columns: Sequence[tuple]) -> None:
    """columns: (header, key, format) triples; format is a str.format spec or a callable."""
    from hyperrag.terminal_table import print_table as print_rows

    cells = [[fmt(row[key]) if callable(fmt) else format(row[key], fmt) for _, key, fmt in columns] for row in rows]
    print_rows(title, [header for header, _, _ in columns], cells)


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


# Headline columns first: a narrow terminal leaves out columns from the right (terminal_table).
PARADIGM_COLUMNS = (
    ("paradigm", "paradigm", "s"), ("baseline mean", "baseline_mean_ttft_s", ms),
    ("HyperRAG mean", "hyperrag_mean_ttft_s", ms), ("speedup mean", "speedup_mean", ".2f"),
    ("baseline p90", "baseline_p90_ttft_s", ms), ("HyperRAG p90", "hyperrag_p90_ttft_s", ms),
    ("speedup p90", "speedup_p90", ".2f"), ("hit rate", "hit_rate", ".1%"), ("token hit", "token_hit_rate", ".1%"),
    ("model", "model", "s"), ("gpus", "num_gpus", "d"), ("qps", "qps", ".2f"),
)
POLICY_COLUMNS = (
    ("capacity", "capacity_fraction", ".0%"), ("policy", "policy", "s"),
    ("token hit", "token_hit_rate", ".1%"), ("saved prefill s", "saved_prefill_s", ".2f"),
    ("mean TTFT", "mean_ttft_s", ms), ("p90 TTFT", "p90_ttft_s", ms),
)
ABLATION_COLUMNS = (
    ("paradigm", "paradigm", "s"), ("load", "load", ".1f"), ("variant", "variant", "s"),
    ("mean TTFT", "mean_ttft_s", ms), ("p90 TTFT", "p90_ttft_s", ms), ("vs HyperRAG", "ttft_vs_hyperrag", ".2f"),
    ("spec fired", "speculations", ".0f"), ("spec kept", "speculations_kept", ".0f"),
    ("wasted prefill s", "wasted_prefill_s", ".3f"),
)


def write_json(name: str, rows: List[dict], args: dict, out_dir: Optional[Path] = None,
               summary: Optional[dict] = None, engine: str = "simulated") -> Path:
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "args": args, "engine": engine, "commit": _commit(),
               "python": platform.python_version(), "rows": rows}
    if summary is not None:
        payload["summary"] = summary
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
