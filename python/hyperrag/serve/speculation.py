"""Real speculative pipelining: prefill the interim top-k of a staged search while it runs.

``serve_staged`` serves one query whose retrieval yields its running top-k stage
by stage (e.g. FaissRetriever.search_staged). On the first interim result a
worker thread starts that path's prefill (and answer decoding) while the
remaining stages are searched in the caller's thread. If the final top-k equals
it, the work is kept; otherwise the worker stops at its next forward pass
(PrefillCancelled), its locks are released and nothing it computed is stored,
and the final top-k is prefilled. Times are wall-clock seconds from the call.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

from hyperrag.engines.base import PrefillCancelled
from hyperrag.serve.query import Query, QueryResult
from hyperrag.serve.scheduler import Job, QueryState, Run

if TYPE_CHECKING:
    from hyperrag.serve.controller import RAGServeController

log = logging.getLogger("hyperrag")


def serve_staged(ctl: "RAGServeController", query_id: str, text: str, stages: Iterable,
                 doc_texts: Mapping[str, str], system_prompt: str = "",
                 output_tokens: Optional[int] = None) -> QueryResult:
    """See RAGServeController.process_staged."""
    engine = ctl.engine
    if not engine.tokenizes:
        raise TypeError(f"process_staged needs an engine that tokenizes (count_tokens); {engine.name!r} does not")
    if not isinstance(doc_texts, Mapping):
        raise ValueError(f"query {query_id!r}: doc_texts must be a dict of document id -> text, "
                         f"got {type(doc_texts).__name__}")

    def state_for(ids) -> QueryState:
        """The query for a top-k, validated before anything of it touches the cache."""
        missing = [d for d in ids if d not in doc_texts]
        if missing:
            raise ValueError(f"query {query_id!r}: doc_texts has no text for {missing}")
        texts = [doc_texts[d] for d in ids]
        bad = [d for d, t in zip(ids, texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"query {query_id!r}: doc_texts must map ids to str; not so for {bad}")
        q = Query(query_id=query_id, text=text, doc_ids=list(ids), doc_texts=texts, system_prompt=system_prompt,
                  output_tokens=output_tokens)
        (prompt,) = ctl.prepare([q])
        return QueryState(q, 0, 0.0, q.hop_bounds(), prompt=prompt)

    def work(job: Job, errors: list) -> None:
        try:
            run.run_job(job)
        except BaseException as e:  # handed to the caller's thread below, whatever it is
            errors.append(e)

    start = time.perf_counter()
    run = Run(ctl, start)
    spec = worker = None
    errors: list = []
    final_ids = None
    try:
        for res in stages:
            final_ids = list(res.doc_ids)
            if spec is None and ctl.speculative and not getattr(res, "final", False):
                sqs = state_for(final_ids)
                run.now = time.perf_counter() - start
                spec = run.admit(sqs, sqs.prompt, speculative=True)
                run.ready.remove(spec)
                spec.state, spec.decode_answer, spec.cancel = "running", True, threading.Event()
                ctl.recorder.count("speculations")
                worker = threading.Thread(target=work, args=(spec, errors), name=f"speculate-{query_id}")
                worker.start()
        if final_ids is None:
            raise ValueError(f"query {query_id!r}: stages yielded no result")
        qs = state_for(final_ids)
        retrieval_s = time.perf_counter() - start
        kept = spec is not None and run.same_documents(spec.prompt, qs.prompt)
        if worker is not None:
            if not kept:
                spec.cancel.set()  # stop the stale work at its next forward pass
            worker.join()
        if kept:
            if errors:
                raise errors[0]
            job = spec
            ctl.recorder.count("speculations_kept")
        else:
            if spec is not None:
                settle_discarded(ctl, run, spec, errors, time.perf_counter() - start)
                qs.res["wasted_s"] = spec.qs.res.get("wasted_s", 0.0)
            run.now = time.perf_counter() - start
            job = run.admit(qs, qs.prompt, speculative=False)
            run.ready.remove(job)
            run.run_job(job)
        job.final, job.state = True, "done"
        job.qs.speculative, job.qs.kept = spec is not None, kept
        job.qs.res["retrieval_s"] = retrieval_s - ctl.timing.rewriter_s
        # The first token is out when both its prefill and the retrieval that confirms it are done.
        run.now = max(retrieval_s, job.end_s)
        run.commit(job)
    finally:
        if worker is not None and worker.is_alive():  # an error above: stop the work, then release
            spec.cancel.set()
            worker.join()
        run.release_all()
        run.events.clear()  # run_job's completion events: this call finished its jobs itself
    return job.qs.result


def settle_discarded(ctl: "RAGServeController", run: Run, spec: Job, errors: list, stopped_s: float) -> None:
    """A stale speculation stopped, finished or failed: its engine time is wasted and
    its KV dropped. Its expected end is PrefillCancelled; another error is counted and
    logged (the query is served from the final top-k regardless), and anything that
    is not an Exception (KeyboardInterrupt, SystemExit) is re-raised."""
    spec.state = "done"
    spec.end_s = stopped_s if errors else min(stopped_s, spec.end_s + (spec.decode_s or 0.0))
    run.waste(spec)
    run.finish(spec)
    for e in errors:
        if not isinstance(e, Exception):
            raise e
        if not isinstance(e, PrefillCancelled):
            ctl.recorder.count("speculation_errors")
            log.warning("a discarded speculative prefill failed: %r", e)
