"""What the controller has served: per-query results folded into counters, and ControllerMetrics."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict

import numpy as np

from hyperrag.serve.query import QueryResult

MIB = 1 << 20
# Latency percentiles are over the most recent queries (a ring of this many), so a
# long-running server's metrics take constant memory; means and counts cover all.
LATENCY_WINDOW = 1 << 17
# TTFT histogram bucket bounds (seconds), cumulative counts over every query (Prometheus style).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


@dataclass
class ControllerMetrics:
    queries: int
    lookups: int                 # tree lookups (one per admitted job)
    hits: int                    # lookups that matched >= 1 document
    hit_rate: float              # hits / lookups, from the tree
    token_hit_rate: float        # matched / looked-up document tokens, from the tree
    query_hit_rate: float        # queries that reused >= 1 document
    query_token_hit_rate: float  # cached / (cached + computed document tokens) over queries
    gpu_used_mib: float          # resident bytes per tier, from the tree
    host_used_mib: float
    gpu_capacity_mib: float
    host_capacity_mib: float
    num_nodes: int
    evictions: Dict[str, int]
    mean_ttft_s: float
    p50_ttft_s: float            # percentiles over the last LATENCY_WINDOW queries
    p90_ttft_s: float
    p99_ttft_s: float
    mean_total_latency_s: float
    prefill_s: float             # engine prefill seconds of kept work
    saved_prefill_s: float       # prefill seconds avoided by reuse (engines that can price a full prefill)
    wasted_prefill_s: float      # engine seconds of discarded speculations
    speculations: int
    speculations_kept: int
    speculation_errors: int      # discarded speculations that failed with an error (the query was served)
    stale_nodes_removed: int     # nodes dropped because their document's content changed
    store_errors: int            # new KV that could not be stored (the query was served; the KV recomputes later)
    remote_hits: int             # segments brought from the shared tier (another process computed them)
    remote_hit_bytes: int
    remote_errors: int           # shared-tier values refused or calls failed (those segments were recomputed)
    tier_hits: Dict[str, int]    # segments reused, by the tier they were found in
    tier_hit_tokens: Dict[str, int]
    ttft_buckets: Dict[float, int]  # queries with TTFT <= bound, for each bound of TTFT_BUCKETS
    ttft_sum_s: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class MetricsRecorder:
    """Counters of everything the controller served. Safe to update and read from
    many threads (one lock; every update is a few additions)."""

    COUNTERS = ("speculations", "speculations_kept", "speculation_errors", "stale_nodes_removed", "store_errors",
                "remote_hits", "remote_hit_bytes", "remote_errors")
    SECONDS = ("prefill_s", "saved_prefill_s", "wasted_prefill_s")

    def __init__(self):
        self._lock = threading.Lock()
        self._queries = 0
        self._cache_hits = 0
        self._cached_tokens = 0
        self._doc_computed_tokens = 0
        self._ttft_sum = 0.0
        self._total_sum = 0.0
        self._ttft = np.zeros(LATENCY_WINDOW)
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._seconds = dict.fromkeys(self.SECONDS, 0.0)
        self._tier_hits: Dict[str, int] = {}
        self._tier_tokens: Dict[str, int] = {}
        self._buckets = np.zeros(len(TTFT_BUCKETS), dtype=np.int64)

    def add_result(self, r: QueryResult) -> None:
        with self._lock:
            self._ttft[self._queries % LATENCY_WINDOW] = r.ttft_s
            self._queries += 1
            self._cache_hits += bool(r.cache_hit)
            self._cached_tokens += r.cached_tokens
            self._doc_computed_tokens += r.computed_tokens - r.question_tokens
            self._ttft_sum += r.ttft_s
            self._total_sum += r.total_latency_s
            self._buckets[np.searchsorted(TTFT_BUCKETS, r.ttft_s):] += 1
            for tier, n in r.tier_hits.items():
                self._tier_hits[tier] = self._tier_hits.get(tier, 0) + n
            for tier, n in r.tier_hit_tokens.items():
                self._tier_tokens[tier] = self._tier_tokens.get(tier, 0) + n

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def add_seconds(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] += seconds

    def snapshot(self, cache) -> ControllerMetrics:
        """ControllerMetrics of everything recorded, with the cache's own statistics."""
        if cache is not None:
            s = cache.stats()
            used, cap = dict(s.used_bytes), dict(s.capacity_bytes)
            lookups, hits = int(s.lookups), int(s.hits)
            lookup_tokens, hit_tokens = int(s.lookup_tokens), int(s.hit_tokens)
            num_nodes, evictions = int(s.num_nodes), {k: int(v) for k, v in dict(s.evictions).items()}
        else:
            used, cap, evictions = {}, {}, {}
            lookups = hits = lookup_tokens = hit_tokens = num_nodes = 0
        with self._lock:
            n = self._queries
            ttft = self._ttft[: min(n, LATENCY_WINDOW)] if n else np.zeros(1)
            cached, computed = self._cached_tokens, self._doc_computed_tokens
            return ControllerMetrics(
                queries=n,
                lookups=lookups,
                hits=hits,
                hit_rate=hits / lookups if lookups else 0.0,
                token_hit_rate=hit_tokens / lookup_tokens if lookup_tokens else 0.0,
                query_hit_rate=self._cache_hits / n if n else 0.0,
                query_token_hit_rate=cached / (cached + computed) if cached + computed else 0.0,
                gpu_used_mib=used.get("gpu", 0) / MIB,
                host_used_mib=used.get("host", 0) / MIB,
                gpu_capacity_mib=cap.get("gpu", 0) / MIB,
                host_capacity_mib=cap.get("host", 0) / MIB,
                num_nodes=num_nodes,
                evictions=evictions,
                mean_ttft_s=self._ttft_sum / n if n else 0.0,
                p50_ttft_s=float(np.percentile(ttft, 50)),
                p90_ttft_s=float(np.percentile(ttft, 90)),
                p99_ttft_s=float(np.percentile(ttft, 99)),
                mean_total_latency_s=self._total_sum / n if n else 0.0,
                **self._seconds,
                **self._counts,
                tier_hits=dict(self._tier_hits),
                tier_hit_tokens=dict(self._tier_tokens),
                ttft_buckets=dict(zip(TTFT_BUCKETS, (int(c) for c in self._buckets))),
                ttft_sum_s=self._ttft_sum,
            )
