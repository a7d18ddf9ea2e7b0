"""RAGServeController: prefix reuse, cache-aware reordering, speculative pipelining.

The controller joins an engine, a cache and the non-engine stage timings.
Each call is scheduled by its own Run (scheduler.py); the cache is touched
only through atomic transactions (transactions.py); what was served is folded
into a MetricsRecorder (metrics.py); real speculation runs in speculation.py.

Thread safety: every public method may be called from many threads at once.
Calls share no scheduling state: a call's queries are scheduled among
themselves (reordering and speculation act within a batch), and concurrent
calls meet only in the cache (whose lookups lock what they match in the same
atomic call, so nothing a job reads can be evicted under it), in the engine
(a real engine runs one forward pass at a time, or batches them) and in the
metrics (locked). No lock of the controller is held while an engine computes.
docs/concurrency.md has the whole design.
"""
from __future__ import annotations

import time
from typing import Iterable, List, Mapping, Optional, Sequence

from hyperrag.engines.approximate_reuse import REUSE_MODES, ApproximateReuse
from hyperrag.engines.base import Engine, Prompt
from hyperrag.serve.metrics import ControllerMetrics, MetricsRecorder
from hyperrag.serve.pipeline import PipelineTiming
from hyperrag.serve.query import Query, QueryResult
from hyperrag.serve.scheduler import Run
from hyperrag.serve.speculation import serve_staged
from hyperrag.serve.transactions import ADMISSIONS, CacheTransactions

DOC_ORDERS = ("retrieval", "cache_aware")


class RAGServeController:
    """Serve RAG queries with document-KV reuse.

    engine: an ``Engine``; cache: a ``KVCache`` (any CacheBackend), or None to
    serve without any cache (the baseline); timing: the non-engine stages.
    ``reorder`` serves waiting queries of a batch by cached_len / compute_len,
    except that one waiting longer than ``starvation_window_s`` goes first.
    ``speculative`` allows at most ``speculative_pool`` unresolved speculative
    prefills per call; they run only when no final job waits for the engine.
    ``default_output_tokens`` is the answer length of queries that do not set
    ``output_tokens`` (real engines decode that many tokens for real).
    ``doc_order``: "retrieval" prompts documents in the retriever's order;
    "cache_aware" in the order whose cached prefix is longest (single-hop
    queries). ``admission``: which new segments get a cache node ("all", or
    "reused_prefix": see transactions.py). ``reuse``: "exact" reuses a cached
    prefix of the prompt only (outputs equal a full prefill); "approximate"
    reuses every document that has a stored form wherever the prompt puts it,
    recomputing ``recompute_budget`` of the re-positioned tokens chosen by
    ``recompute_policy`` (hyperrag.engines.approximate_reuse: faster, outputs
    may differ; measure it on your model). Documents are cached under their id
    plus a fingerprint of their content, so a document re-sent with changed
    content is recomputed and its old KV dropped. Safe to call from many threads
    (see the module docstring).
    """

    def __init__(self, engine: Engine, cache=None, timing: Optional[PipelineTiming] = None, *,
                 reorder: bool = True, starvation_window_s: float = 1.0,
                 speculative: bool = True, speculative_pool: int = 4,
                 insert_tier: str = "gpu", system_prompt: str = "", default_output_tokens: int = 0,
                 doc_order: str = "retrieval", admission: str = "all", remote=None, reuse: str = "exact",
                 recompute_policy: str = "deviation", recompute_budget: float = 0.3, config=None, schedule=None):
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be a hyperrag Engine, got {type(engine).__name__}")
        if isinstance(starvation_window_s, bool) or not isinstance(starvation_window_s, (int, float)) \
                or not 0 <= starvation_window_s < float("inf"):
            raise ValueError(f"starvation_window_s must be a finite number of seconds >= 0, got {starvation_window_s!r}")
        for name, value in (("speculative_pool", speculative_pool), ("default_output_tokens", default_output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str, got {type(system_prompt).__name__}")
        if doc_order not in DOC_ORDERS:
            raise ValueError(f"doc_order {doc_order!r} is unknown; allowed: {', '.join(DOC_ORDERS)}")
        if admission not in ADMISSIONS:
            raise ValueError(f"admission {admission!r} is unknown; allowed: {', '.join(ADMISSIONS)}")
        if reuse not in REUSE_MODES:
            raise ValueError(f"reuse {reuse!r} is unknown; allowed: {', '.join(REUSE_MODES)}")
        approximate = ApproximateReuse(recompute_policy, recompute_budget) if reuse == "approximate" else None
        if approximate is not None and getattr(engine, "num_layers", None):
            approximate.check(engine.num_layers)
        self.reuse = reuse
        self.engine = engine
        self.cache = cache
        self.timing = timing or PipelineTiming()
        self.reorder = bool(reorder)
        self.starvation_window_s = float(starvation_window_s)
        self.speculative = bool(speculative) and speculative_pool > 0
        self.speculative_pool = speculative_pool
        self.system_prompt = system_prompt
        self.default_output_tokens = default_output_tokens
        self.doc_order = doc_order
        self.config = config
        self.schedule = schedule
        self.recorder = MetricsRecorder()
        self.transactions = CacheTransactions(cache, engine, insert_tier, self.recorder, admission, remote,
                                              approximate)

    # ----------------------------------------------------------------- public
    def process(self, query: Query) -> QueryResult:
        """Serve one query; it arrives ``query.arrival_s`` after the call starts."""
        return self.process_batch([query])[0]

    def process_batch(self, queries: Sequence[Query]) -> List[QueryResult]:
        """Serve queries arriving at their ``arrival_s`` (relative to this call); results in input order.

        All queries are validated before the cache is touched. If the engine
        fails, every lock this call took is released and nothing of the failed
        prefill is stored; the exception propagates.
        """
        t0 = time.perf_counter()
        if isinstance(queries, (str, bytes, Query)) or not hasattr(queries, "__iter__"):
            raise TypeError(f"queries must be a list of Query, got {type(queries).__name__}")
        queries = list(queries)
        prompts = self.prepare(queries)
        return Run(self, t0).serve(queries, prompts)

    def process_staged(self, query_id: str, text: str, stages: Iterable, doc_texts: Mapping[str, str], *,
                       system_prompt: str = "", output_tokens: Optional[int] = None) -> QueryResult:
        """Serve one query while its retrieval runs, speculating for real (engines that tokenize).

        stages yields the running top-k of a staged search (objects with
        ``doc_ids``, e.g. FaissRetriever.search_staged); the last one is final.
        On the first interim result, its prefill (and answer decoding) starts in
        a worker thread while the remaining stages are computed here. If the
        final top-k equals it, that work is kept; otherwise it is stopped at its
        next forward pass (locks released, nothing it computed stored) and the
        final top-k is prefilled. Times are wall-clock seconds from the call:
        ttft_s includes the retrieval (a kept speculation's first token counts
        once the final stage has confirmed it). doc_texts maps every document
        id the stages may return to its text.
        """
        return serve_staged(self, query_id, text, stages, doc_texts, system_prompt, output_tokens)

    def metrics(self) -> ControllerMetrics:
        """Everything served so far by every thread, with the cache's statistics."""
        return self.recorder.snapshot(self.cache)

    # ---------------------------------------------------------- used by runs
    def prepare(self, queries: Sequence[Query]) -> List[Prompt]:
        """Validate every query and build its prompt (tokenized, checked against the
        model's window); nothing changes on failure. Then record each document's
        content, dropping the old nodes of documents whose content changed."""
        ids, prompts = set(), []
        for q in queries:
            if not isinstance(q, Query):
                raise TypeError(f"expected a hyperrag Query, got {type(q).__name__}")
            q.validate()
            try:
                prompts.append(self.engine.prompt(
                    q.doc_ids, q.doc_tokens, q.doc_texts, q.doc_token_ids, q.text, q.question_ids,
                    q.system_prompt or self.system_prompt, self.output_tokens(q)))
            except ValueError as e:
                raise ValueError(f"query {q.query_id!r}: {e}") from e
            if q.query_id in ids:
                raise ValueError(f"duplicate query_id {q.query_id!r} in the batch; query ids must be unique")
            ids.add(q.query_id)
        for prompt in prompts:
            self.transactions.track(prompt)
        return prompts

    def output_tokens(self, q: Query) -> int:
        return self.default_output_tokens if q.output_tokens is None else int(q.output_tokens)
