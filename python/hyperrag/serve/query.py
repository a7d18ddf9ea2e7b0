"""Queries and per-query results of the serving controller."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple


@dataclass
class Query:
    """One RAG request: a question and the documents its retriever returned, in order.

    ``doc_ids`` are the final top-k. Their content comes as ``doc_texts`` (the
    engine's prompt template applies), or as ``doc_token_ids`` (each document's
    exact token ids, for a caller with its own tokenizer or template; then
    ``question_ids`` may carry the question's), or, for the simulated engine,
    only as ``doc_tokens`` (token counts; optional when texts or ids are given).
    ``arrival_s`` is relative to the start of the ``process``/``process_batch``
    call that serves the query.
    ``hops`` splits an iterative query: ``hops=(2, 2)`` means doc_ids[:2] come from
    the first retrieval and doc_ids[2:4] from the second (None: one retrieval).
    ``interim_doc_ids`` optionally gives the interim top-k of each retrieval stage
    (from a real staged search); without it the controller's retrieval model draws them.
    ``top_logits`` > 0 asks real engines for the first token's highest logits.
    """

    query_id: str
    text: str
    doc_ids: Sequence[str]
    doc_tokens: Optional[Sequence[int]] = None
    doc_texts: Optional[Sequence[str]] = None
    arrival_s: float = 0.0
    system_prompt: str = ""
    hops: Optional[Sequence[int]] = None
    interim_doc_ids: Optional[Sequence[Sequence[str]]] = None
    output_tokens: Optional[int] = None  # answer length; None: the controller's default
    doc_token_ids: Optional[Sequence[Sequence[int]]] = None
    question_ids: Optional[Sequence[int]] = None
    top_logits: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the bad field and what it allows; called before the cache is touched."""
        if not isinstance(self.query_id, str) or not self.query_id:
            raise ValueError(f"query_id must be a non-empty string, got {self.query_id!r}")
        where = f"query {self.query_id!r}"

        def bad(field_name: str, allowed: str, value) -> ValueError:
            return ValueError(f"{where}: {field_name} must be {allowed}, got {_short(value)}")

        if not isinstance(self.text, str):
            raise bad("text", "a str (the question)", self.text)
        if not isinstance(self.system_prompt, str):
            raise bad("system_prompt", "a str", self.system_prompt)
        for name in ("doc_ids", "doc_tokens"):
            value = getattr(self, name)
            if not _is_sequence(value) and not (name == "doc_tokens" and value is None):
                raise bad(name, "a list", value)
        ids = list(self.doc_ids)
        toks = list(self.doc_tokens) if self.doc_tokens is not None else []
        if not ids:
            raise ValueError(f"{where}: doc_ids is empty; a query needs at least one document")
        if self.doc_tokens is not None and len(ids) != len(toks):
            raise ValueError(f"{where}: len(doc_ids)={len(ids)} != len(doc_tokens)={len(toks)}")
        for d in ids:
            if not isinstance(d, str) or not d:
                raise bad("doc_ids", "non-empty strings", d)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}: doc_ids contains duplicates: {ids}")
        for t in toks:
            if not _is_int(t) or not 0 < t <= MAX_DOC_TOKENS:
                raise bad("doc_tokens", f"positive integers (at most {MAX_DOC_TOKENS})", t)
        if self.doc_texts is not None:
            if not _is_sequence(self.doc_texts) or len(self.doc_texts) != len(ids):
                raise ValueError(f"{where}: doc_texts must be None or a list of len(doc_ids)={len(ids)} str, "
                                 f"got {_short(self.doc_texts)}")
            for text in self.doc_texts:
                if not isinstance(text, str):
                    raise bad("doc_texts", "strings (one text per document)", text)
        if self.doc_token_ids is not None:
            if not _is_sequence(self.doc_token_ids) or len(self.doc_token_ids) != len(ids):
                raise ValueError(f"{where}: doc_token_ids must be None or a list of len(doc_ids)={len(ids)} lists "
                                 f"of token ids, got {_short(self.doc_token_ids)}")
            for part in self.doc_token_ids:
                if not _is_token_ids(part):
                    raise bad("doc_token_ids", "non-empty lists of token ids (integers >= 0)", part)
        if self.question_ids is not None and not _is_token_ids(self.question_ids):
            raise bad("question_ids", "None or a non-empty list of token ids (integers >= 0)", self.question_ids)
        if not _is_int(self.top_logits) or not 0 <= self.top_logits <= MAX_TOP_LOGITS:
            raise bad("top_logits", f"an integer in [0, {MAX_TOP_LOGITS}]", self.top_logits)
        if isinstance(self.arrival_s, bool) or not isinstance(self.arrival_s, numbers.Real) \
                or not 0.0 <= self.arrival_s <= MAX_ARRIVAL_S:  # also rejects NaN and inf
            raise bad("arrival_s", f"a number of seconds in [0, {MAX_ARRIVAL_S:g}]", self.arrival_s)
        if self.output_tokens is not None and (not _is_int(self.output_tokens)
                                               or not 0 <= self.output_tokens <= MAX_OUTPUT_TOKENS):
            raise bad("output_tokens", f"None or an integer in [0, {MAX_OUTPUT_TOKENS}]", self.output_tokens)
        if self.hops is not None:
            hops = list(self.hops) if _is_sequence(self.hops) else None
            if not hops or not all(_is_int(h) and h > 0 for h in hops) or sum(hops) != len(ids):
                raise bad("hops", f"positive integers summing to len(doc_ids)={len(ids)}", self.hops)
        if self.interim_doc_ids is not None:
            if not _is_sequence(self.interim_doc_ids):
                raise bad("interim_doc_ids", "a list of lists of document ids", self.interim_doc_ids)
            for stage in self.interim_doc_ids:
                if not _is_sequence(stage) or not all(isinstance(d, str) and d for d in stage):
                    raise bad("interim_doc_ids", "lists of document ids", stage)

    def hop_bounds(self) -> Tuple[int, ...]:
        """End index into doc_ids of each retrieval hop."""
        sizes = list(self.hops) if self.hops is not None else [len(self.doc_ids)]
        ends, acc = [], 0
        for s in sizes:
            acc += int(s)
            ends.append(acc)
        return tuple(ends)


# Bounds that keep the arithmetic of a query meaningful before any model window is known
# (the engine then checks prompt + output against its own window).
MAX_DOC_TOKENS = 1 << 24
MAX_OUTPUT_TOKENS = 1 << 20
MAX_ARRIVAL_S = 1e6  # an arrival offset within one call; larger ones lose sub-millisecond precision
MAX_TOP_LOGITS = 1000


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_token_ids(x) -> bool:
    return _is_sequence(x) and len(x) > 0 and all(_is_int(t) and t >= 0 for t in x)


def _is_sequence(x) -> bool:
    return isinstance(x, (list, tuple)) or (hasattr(x, "__len__") and hasattr(x, "__getitem__")
                                            and not isinstance(x, (str, bytes, dict)))


def _short(value) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


@dataclass
class QueryResult:
    """What serving one query cost and where its KV came from.

    Times are seconds of the controller's clock: measured for real engines,
    modelled (cost model) for the simulated engine.
    """

    query_id: str
    ttft_s: float                 # arrival -> first token of the answer
    total_latency_s: float        # arrival -> last output token
    cached_tokens: int            # prompt tokens whose KV was reused (system prompt and documents)
    computed_tokens: int          # system prompt, document and question tokens prefilled
    question_tokens: int = 0      # the question's share of computed_tokens
    recomputed_tokens: int = 0    # approximate reuse: reused tokens computed again in place (in computed_tokens)
    cache_hit: bool = False       # at least one document's KV was reused
    speculative: bool = False     # a speculative prefill was started for this query
    speculation_kept: bool = False  # ... and the final top-k agreed, so its work was used
    tier_hits: Dict[str, int] = field(default_factory=dict)  # tier -> segments (system, documents) served from it
    tier_hit_tokens: Dict[str, int] = field(default_factory=dict)  # tier -> tokens served from it
    matched_docs: int = 0         # documents whose KV was reused
    stored_docs: int = 0          # new document nodes inserted into the tree
    retrieval_s: float = 0.0      # retrieval (+ rewriter/reranker) time on the critical path
    queue_s: float = 0.0          # waiting for the engine
    load_s: float = 0.0           # moving cached KV to the GPU tier
    prefill_s: float = 0.0        # prefill on the critical path
    wasted_prefill_s: float = 0.0  # engine time of discarded speculations
    hops: int = 1
    output_token_ids: Optional[list] = None  # real engines: greedy answer tokens, the first token first
    top_logits: list = field(default_factory=list)  # [(token id, logit)] of the first token, when asked
    doc_order: Optional[list] = None  # the documents in the order they were prompted (cache-aware order)
