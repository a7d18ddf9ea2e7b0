"""One call's schedule: a discrete-event loop over its queries, jobs and the engine lane.

Each ``process``/``process_batch`` call gets its own ``Run``: its clock starts
at 0 when the call starts, with an idle engine lane, and nothing of it is
shared with other calls. Several threads can therefore each run a call at the
same time; they meet only in the cache (whose transactions are atomic, see
transactions.py), in the engine (which serializes or batches its own forward
passes) and in the metrics recorder (locked).

Inside a run: one engine lane runs prefills one after another,
``retrieval_workers`` lanes run searches, and rewriter/reranker/decode add
fixed delays. A query's life per retrieval hop: search (in stages) ->
documents known -> lookup + lock of the cached prefix -> wait for the engine ->
load slow hits -> prefill the rest -> store new documents -> unlock. With
speculation an interim top-k starts the same job early; it is kept if the final
top-k agrees, otherwise dropped (its engine time is spent, nothing it computed
is stored). Waiting jobs are served by cached_len / compute_len (cache-aware
reordering) unless the oldest has waited longer than the starvation window.

Times come from the engine: modelled (simulated) or measured (real engines).
With a measured engine the run's clock never lags the wall clock: a job starts
no earlier than the wall time since the call began, so TTFT covers everything
from the call to the first token (validating and tokenizing the query, cache
lookups and reads, waiting for an engine busy with another thread's work, the
prefill), and storing new KV after the first token does not count.

Document order: with ``doc_order="cache_aware"`` a single-hop query's documents
are prompted in the order whose cached prefix is longest (the server's choice:
the retrieved set is what the answer depends on); "retrieval" keeps the
retriever's order.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np

from hyperrag.engines.base import PrefillRequest, Prompt
from hyperrag.serve.query import Query, QueryResult
from hyperrag.serve.transactions import Lookup

if TYPE_CHECKING:
    from hyperrag.serve.controller import RAGServeController


@dataclass(eq=False)
class Job:
    """One prefill of a document path on the engine lane."""

    seq: int
    qs: "QueryState"
    hop: int
    prompt: Prompt               # the segments of this job's path (system, documents) and the question
    speculative: bool
    ready_s: float
    lookup: Lookup = field(default_factory=Lookup)  # locked until the job finishes
    final: bool = False          # the final top-k of its hop (a kept speculation becomes final)
    state: str = "queued"        # queued | running | done | cancelled
    discarded: bool = False
    start_s: float = 0.0
    end_s: float = 0.0
    load_s: float = 0.0
    wait_s: float = 0.0          # measured engines: wall time waiting for the engine
    prefill_s: float = 0.0
    result: object = None
    token_ids: Optional[list] = None  # greedy output of a real engine (first token first)
    decode_s: Optional[float] = None  # measured decode time after the first token
    decode_answer: bool = False  # a real speculation (process_staged) decodes the answer too
    cancel: Optional[threading.Event] = None  # set: a real engine stops at its next forward pass
    score: float = 0.0           # cached_len / compute_len for reordering
    finished: bool = False       # locks released


@dataclass(eq=False)
class QueryState:
    query: Query
    index: int
    arrival_s: float
    bounds: tuple
    prompt: Prompt               # every segment of the query, in retrieval order
    hop: int = 0
    hop_start_s: float = 0.0
    spec: Optional[Job] = None
    res: Dict[str, float] = field(default_factory=dict)
    tier_hits: Dict[str, int] = field(default_factory=dict)
    tier_hit_tokens: Dict[str, int] = field(default_factory=dict)
    speculative: bool = False
    kept: bool = False
    cache_hit: bool = False
    result: Optional[QueryResult] = None


class Run:
    """The schedule of one call (see the module docstring). Not shared between threads."""

    def __init__(self, ctl: "RAGServeController", t0: float):
        self.ctl = ctl
        self.engine = ctl.engine
        self.timing = ctl.timing
        self.tx = ctl.transactions
        self.t0 = t0                     # perf_counter() when the call began
        self.measured = not self.engine.accounts_only
        self.events: list = []
        self.seq = itertools.count()
        self.now = 0.0
        self.ready: List[Job] = []       # jobs waiting for the engine
        self.live: List[Job] = []        # jobs that may hold locks
        self.active_spec = 0
        self.engine_free = 0.0
        self.retrieval_free = [0.0] * int(self.timing.retrieval_workers)

    # ------------------------------------------------------------------ driver
    def serve(self, queries: List[Query], prompts: List[Prompt]) -> List[QueryResult]:
        """Serve queries arriving at their arrival_s; results in input order. If the
        engine fails, every lock this run took is released and nothing of the failed
        prefill is stored; the exception propagates."""
        states = [QueryState(query=q, index=i, arrival_s=float(q.arrival_s), bounds=q.hop_bounds(), prompt=p)
                  for i, (q, p) in enumerate(zip(queries, prompts))]
        try:
            for qs in states:
                self.at(qs.arrival_s + self.timing.rewriter_s, self.start_hop, qs)
            while self.events:
                t, _, fn, args = heapq.heappop(self.events)
                self.now = t
                fn(*args)
                self.dispatch()
        finally:
            self.release_all()
        unfinished = [qs.query.query_id for qs in states if qs.result is None]
        if unfinished:
            raise RuntimeError(f"the schedule ended with unfinished queries {unfinished}: a controller bug")
        return [qs.result for qs in states]

    def at(self, t: float, fn, *args) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn, args))

    def release_all(self) -> None:
        for job in list(self.live):
            self.finish(job)

    # -------------------------------------------------------------- retrieval
    def start_hop(self, qs: QueryState) -> None:
        qs.hop_start_s = self.now
        stages = self.timing.stage_seconds()
        if not stages:
            self.docs_known(qs)
            return
        lane = int(np.argmin(self.retrieval_free))
        start = max(self.now, self.retrieval_free[lane])
        self.retrieval_free[lane] = start + sum(stages)
        t = start
        for s, dt in enumerate(stages):
            t += dt
            self.at(t, self.stage_done, qs, s)

    def hop_path(self, qs: QueryState) -> Prompt:
        """The query's segments up to the end of its current hop."""
        return qs.prompt.select(range(qs.prompt.fixed + qs.bounds[qs.hop]))

    def stage_done(self, qs: QueryState, stage: int) -> None:
        last = int(self.timing.retrieval_stages) - 1
        if stage == last:
            self.at(self.now + self.timing.reranker_s, self.docs_known, qs)
            return
        if not (self.ctl.speculative and self.timing.can_speculate):
            return
        q = qs.query
        start = qs.bounds[qs.hop - 1] if qs.hop else 0
        final = self.hop_path(qs)
        fixed = final.fixed
        interim = self.timing.interim(q.query_id, qs.hop, list(final.segment_ids[fixed + start:]),
                                      q.interim_doc_ids if qs.hop == 0 and q.interim_doc_ids else None)[stage]
        path = self.interim_prompt(qs, final, list(final.segment_ids[:fixed + start]) + list(interim))
        if qs.spec is not None and path is not None and self.same_documents(qs.spec.prompt, path):
            return
        if qs.spec is not None:
            self.discard(qs.spec)
            qs.spec = None
        if path is None or self.active_spec >= self.ctl.speculative_pool:
            return
        job = self.admit(qs, path, speculative=True)
        qs.spec = job
        qs.speculative = True
        self.active_spec += 1
        self.tx.recorder.count("speculations")

    def interim_prompt(self, qs: QueryState, final: Prompt, ids: List[str]) -> Optional[Prompt]:
        """The prompt of an interim top-k: the query's own segments where it has them; a
        modelled interim document ("d~stage1", the simulation's) gets its final
        document's length. None when the engine would need a text the query lacks."""
        index = {d: i for i, d in enumerate(qs.prompt.segment_ids)}
        if all(d in index for d in ids):
            return qs.prompt.select([index[d] for d in ids])
        if self.engine.tokenizes:
            return None
        tokens = dict(zip(qs.prompt.segment_ids, qs.prompt.segment_tokens))
        toks = [tokens.get(d, tokens.get(d.split("~stage")[0])) for d in ids]
        if None in toks:
            return None
        return self.engine.prompt(ids, toks, question=qs.query.text)

    def same_documents(self, a: Prompt, b: Prompt) -> bool:
        """Whether a speculation's path serves the final one: the same segments, in the same
        order unless the server chooses the order (cache-aware)."""
        if self.ctl.doc_order == "cache_aware" and a.fixed == b.fixed:
            return a.segment_ids[:a.fixed] == b.segment_ids[:b.fixed] and \
                sorted(a.segment_ids[a.fixed:]) == sorted(b.segment_ids[b.fixed:])
        return a.segment_ids == b.segment_ids

    def docs_known(self, qs: QueryState) -> None:
        path = self.hop_path(qs)
        qs.res["retrieval_s"] = qs.res.get("retrieval_s", 0.0) + self.now - qs.hop_start_s
        spec, qs.spec = qs.spec, None
        if spec is not None and self.same_documents(spec.prompt, path):
            self.active_spec -= 1
            self.tx.recorder.count("speculations_kept")
            qs.kept = True
            spec.final = True
            if spec.state == "done":
                self.commit(spec)
            return
        if spec is not None:
            self.discard(spec)
        self.admit(qs, path, speculative=False).final = True

    # ------------------------------------------------------------------- jobs
    def namespace(self, q: Query) -> str:
        return self.engine.namespace(q.system_prompt or self.ctl.system_prompt)

    def admit(self, qs: QueryState, path: Prompt, speculative: bool) -> Job:
        """Order the path (cache-aware, single-hop queries), look up and lock its cached
        prefix, queue the job for the engine."""
        namespace = self.namespace(qs.query)
        if self.ctl.doc_order == "cache_aware" and len(qs.bounds) == 1:
            path = self.tx.best_order(namespace, path)
        job = Job(seq=next(self.seq), qs=qs, hop=qs.hop, prompt=path, speculative=speculative, ready_s=self.now)
        job.lookup = self.tx.lookup(namespace, path)
        self.live.append(job)
        cached = job.lookup.matched_tokens
        job.score = cached / max(path.tokens - cached, 1)
        self.ready.append(job)
        return job

    def discard(self, job: Job) -> None:
        job.discarded = True
        if job.state == "queued":
            self.ready.remove(job)
            job.state = "cancelled"
            self.finish(job)
            self.active_spec -= 1
        elif job.state == "done":
            self.waste(job)
            self.finish(job)
            self.active_spec -= 1
        elif self.engine.preemptible:
            # Stop the stale prefill now (as RAGCache does); the engine time so far is lost.
            job.end_s = self.now
            self.engine_free = self.now
            job.state = "cancelled"
            self.waste(job)
            self.finish(job)
            self.active_spec -= 1
        # else running to completion: the slot and the waste are settled in job_done

    def dispatch(self) -> None:
        if self.engine_free > self.now or not self.ready:
            return
        job = self.pick()
        self.ready.remove(job)
        self.run_job(job)

    def pick(self) -> Job:
        finals = [j for j in self.ready if j.final]
        if not finals:
            return min(self.ready, key=lambda j: j.seq)  # speculations in launch order
        oldest = min(finals, key=lambda j: (j.ready_s, j.seq))
        if not self.ctl.reorder or self.now - oldest.ready_s > self.ctl.starvation_window_s:
            return oldest
        return max(finals, key=lambda j: (j.score, -j.ready_s, -j.seq))

    def run_job(self, job: Job) -> None:
        """Start a job on the engine lane: load slow hits, prefill the rest."""
        if self.measured:
            self.now = max(self.now, time.perf_counter() - self.t0)
        job.state = "running"
        job.start_s = self.now
        t0 = time.perf_counter()
        cached_kv, slow_bytes, job.lookup = self.tx.load(job.lookup, job.prompt.segment_ids)
        if self.timing.kv_load_seconds is not None:
            job.load_s = float(self.timing.kv_load_seconds(slow_bytes)) if slow_bytes else 0.0
        else:
            job.load_s = time.perf_counter() - t0
        q = job.qs.query
        n = len(job.prompt.segment_ids)
        approximate = self.tx.approximate
        request = PrefillRequest(namespace=self.namespace(q), prompt=job.prompt, cached=cached_kv,
                                 cancelled=job.cancel.is_set if job.cancel is not None else None,
                                 top_logits=q.top_logits, reuse=approximate,
                                 cached_segments=job.lookup.segments if approximate is not None else None)
        out_tokens = self.ctl.output_tokens(q)
        t0 = time.perf_counter()
        if self.engine.decodes and (job.decode_answer or not job.speculative) \
                and job.hop == len(job.qs.bounds) - 1 and out_tokens > 1:
            # The answer of the last hop is decoded for real, on the engine lane.
            gen = self.engine.generate(request, max_new_tokens=out_tokens)
            job.result, job.token_ids, job.decode_s = gen.prefill, list(gen.token_ids), float(gen.decode_seconds)
        else:
            job.result = self.engine.prefill(request)
            if job.result.first_token_id is not None:
                job.token_ids = [int(job.result.first_token_id)]
        if self.measured:
            # Wall time beyond the engine's own measure: waiting for an engine busy with other threads.
            job.wait_s = max(0.0, time.perf_counter() - t0 - float(job.result.seconds) - (job.decode_s or 0.0)
                             - float(job.result.extract_seconds))
        if len(job.result.new_kv) != n - len(cached_kv):
            raise RuntimeError(
                f"engine {self.engine.name!r} returned KV for {len(job.result.new_kv)} documents, "
                f"expected {n - len(cached_kv)}"
            )
        job.prefill_s = float(job.result.seconds)
        job.end_s = self.now + job.load_s + job.wait_s + job.prefill_s
        self.engine_free = job.end_s + (job.decode_s or 0.0)
        self.at(job.end_s, self.job_done, job)

    def job_done(self, job: Job) -> None:
        if job.state == "cancelled":  # preempted speculation
            return
        job.state = "done"
        if job.discarded:
            self.waste(job)
            self.finish(job)
            self.active_spec -= 1
        elif job.final:
            self.commit(job)
        # else: a speculation waiting for its final top-k

    def waste(self, job: Job) -> None:
        spent = job.end_s - job.start_s
        self.tx.recorder.add_seconds("wasted_prefill_s", spent)
        job.qs.res["wasted_s"] = job.qs.res.get("wasted_s", 0.0) + spent

    def commit(self, job: Job) -> None:
        """The job's work is used: store new documents, update the policy, end the hop."""
        qs, res = job.qs, job.result
        stored = self.tx.commit(self.namespace(qs.query), job.prompt, job.lookup, list(res.new_kv),
                                int(res.question_tokens))
        self.finish(job)
        self.account(job, stored)
        self.hop_done(qs, job)

    def finish(self, job: Job) -> None:
        """Release the job's locks (once)."""
        if not job.finished:
            job.finished = True
            self.tx.release(job.lookup.node_ids)
        if job in self.live:
            self.live.remove(job)

    def account(self, job: Job, stored: int) -> None:
        qs, lookup, res = job.qs, job.lookup, job.result
        r = qs.res
        cached = lookup.matched_tokens
        new_doc = sum(job.prompt.segment_tokens) - cached
        r["cached"] = r.get("cached", 0) + cached
        recomputed = int(res.recomputed_tokens)
        r["computed"] = r.get("computed", 0) + new_doc + int(res.question_tokens) + recomputed
        r["recomputed"] = r.get("recomputed", 0) + recomputed
        r["question"] = r.get("question", 0) + int(res.question_tokens)
        docs_hit = max(0, lookup.matched_docs - job.prompt.fixed)  # the system prompt is not a document
        r["matched_docs"] = r.get("matched_docs", 0) + docs_hit
        r["stored"] = r.get("stored", 0) + stored
        r["queue_s"] = r.get("queue_s", 0.0) + max(0.0, job.start_s - job.ready_s) + job.wait_s
        r["load_s"] = r.get("load_s", 0.0) + job.load_s
        r["prefill_s"] = r.get("prefill_s", 0.0) + job.prefill_s
        qs.cache_hit = qs.cache_hit or docs_hit > 0
        for tier, tok in zip(lookup.tiers, lookup.tokens):
            qs.tier_hits[tier] = qs.tier_hits.get(tier, 0) + 1
            qs.tier_hit_tokens[tier] = qs.tier_hit_tokens.get(tier, 0) + int(tok)
        recorder = self.tx.recorder
        recorder.add_seconds("prefill_s", job.prefill_s)
        full = self.engine.prefill_seconds(0, new_doc + cached + int(res.question_tokens)) if cached else None
        if full is not None:
            recorder.add_seconds("saved_prefill_s", max(0.0, full - job.prefill_s))

    def hop_done(self, qs: QueryState, job: Job) -> None:
        """First token of this hop's generation is out now."""
        q = qs.query
        context = sum(job.prompt.segment_tokens) + int(qs.res.get("question", 0))
        if qs.hop + 1 < len(qs.bounds):
            qs.hop += 1
            gap = self.engine.decode_seconds(context, int(self.timing.hop_decode_tokens))
            self.at(self.now + gap, self.start_hop, qs)
            return
        ttft = self.now - qs.arrival_s
        if job.decode_s is not None:
            total = ttft + job.decode_s
        else:
            total = ttft + self.engine.decode_seconds(context, self.ctl.output_tokens(q))
        r = qs.res
        qs.result = QueryResult(
            query_id=q.query_id,
            ttft_s=ttft,
            total_latency_s=total,
            cached_tokens=int(r["cached"]),
            computed_tokens=int(r["computed"]),
            question_tokens=int(r["question"]),
            recomputed_tokens=int(r.get("recomputed", 0)),
            cache_hit=qs.cache_hit,
            speculative=qs.speculative,
            speculation_kept=qs.kept,
            tier_hits=dict(qs.tier_hits),
            tier_hit_tokens=dict(qs.tier_hit_tokens),
            matched_docs=int(r["matched_docs"]),
            stored_docs=int(r["stored"]),
            retrieval_s=float(r.get("retrieval_s", 0.0)) + self.timing.rewriter_s,
            queue_s=float(r["queue_s"]),
            load_s=float(r["load_s"]),
            prefill_s=float(r["prefill_s"]),
            wasted_prefill_s=float(r.get("wasted_s", 0.0)),
            hops=len(qs.bounds),
            output_token_ids=job.token_ids,
            top_logits=list(job.result.top_logits),
            doc_order=list(job.prompt.doc_ids),
        )
        self.tx.recorder.add_result(qs.result)
