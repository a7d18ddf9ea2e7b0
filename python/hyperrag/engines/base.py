"""The engine interface: what the serving controller asks of an LLM engine.

The controller owns the cache (which segments are cached, where, locked);
an engine builds a query's Prompt (its cacheable segments and question,
tokenized and checked once) and turns "KV of the cached segments + what is
missing" into the missing segments' KV and a first token. Simulated,
transformers and vLLM engines all implement this one interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from hyperrag.cache.identity import document_key
from hyperrag.engines.approximate_reuse import ApproximateReuse

# The segment name of the system prompt, for engines that cache it as the first
# segment of every prompt (a tree node like any document; never a caller's id).
SYSTEM_SEGMENT = "<system>"


@dataclass(frozen=True)
class Prompt:
    """A query's prompt as its engine will run it: cacheable segments, then the question.

    Segments are the system prompt (``SYSTEM_SEGMENT``, for engines that cache
    it) and the documents, each tokenized on its own, so a segment's tokens never
    depend on its neighbours and the KV of segment i depends only on segments
    0..i-1: the tree path of its node. Built once per query by ``Engine.prompt``,
    before anything touches the cache.
    """

    segment_ids: Tuple[str, ...]       # SYSTEM_SEGMENT (when cached) then the caller's document ids
    segment_tokens: Tuple[int, ...]    # tokens of each segment
    fingerprints: Tuple[str, ...]      # content fingerprint of each segment (hyperrag.cache.identity)
    question_tokens: int
    token_ids: Optional[Tuple[Tuple[int, ...], ...]] = None  # exact ids of each segment (engines that tokenize)
    question_ids: Optional[Tuple[int, ...]] = None

    @property
    def fixed(self) -> int:
        """Leading segments that are not documents (the system prompt): never reordered."""
        return 1 if self.segment_ids[:1] == (SYSTEM_SEGMENT,) else 0

    @property
    def doc_ids(self) -> Tuple[str, ...]:
        return self.segment_ids[self.fixed:]

    @property
    def keys(self) -> Tuple[str, ...]:
        """Tree key of each segment: its id plus its content fingerprint."""
        return tuple(document_key(i, f) for i, f in zip(self.segment_ids, self.fingerprints))

    @property
    def tokens(self) -> int:
        return sum(self.segment_tokens) + self.question_tokens

    def select(self, order: Sequence[int]) -> "Prompt":
        """The prompt with its segments taken in ``order`` (indices; a subset or a permutation)."""
        pick = lambda xs: None if xs is None else tuple(xs[i] for i in order)  # noqa: E731
        return replace(self, segment_ids=pick(self.segment_ids), segment_tokens=pick(self.segment_tokens),
                       fingerprints=pick(self.fingerprints), token_ids=pick(self.token_ids))


@dataclass(frozen=True)
class DocumentKV:
    """KV state of one document at one position of one prefix path.

    payload is the engine's own serialized KV (uint8, contiguous) or None for
    engines that only account for bytes (the simulated engine).
    """

    doc_id: str
    tokens: int          # number of tokens whose KV this holds
    nbytes: int          # logical KV bytes (what the cache accounts for)
    payload: Optional[np.ndarray] = None


def check_window(prompt: Prompt, output_tokens: int, max_context: Optional[int]) -> None:
    """ValueError when the prompt plus ``output_tokens`` exceeds ``max_context`` (None: no limit)."""
    if max_context is not None and prompt.tokens + output_tokens > max_context:
        docs = sum(prompt.segment_tokens[prompt.fixed:])
        raise ValueError(
            f"the prompt has {prompt.tokens} tokens ({docs} in {len(prompt.doc_ids)} documents) and "
            f"output_tokens={output_tokens}: {prompt.tokens + output_tokens} tokens exceed the model's "
            f"context window of {max_context}")


@dataclass
class PrefillRequest:
    """One prefill of ``prompt``: the KV of its first len(cached) segments is given.

    With ``reuse`` (engines with ``approximates``), ``cached`` holds position-independent
    forms (hyperrag.engines.approximate_reuse) of the segments ``cached_segments``, any
    subset in prompt order; new_kv then holds the forms of the other segments.
    """

    namespace: str                  # engine.namespace(...): where these segments' KV is valid
    prompt: Prompt
    cached: Sequence[DocumentKV] = ()          # KV of prompt.segment_ids[:len(cached)], in order
    reuse: Optional[ApproximateReuse] = None   # None: exact reuse of a cached prefix
    cached_segments: Optional[Sequence[int]] = None  # with reuse: the segment index of each cached entry
    # Checked between forward passes by engines that can stop early: True raises PrefillCancelled.
    cancelled: Optional[Callable[[], bool]] = None
    top_logits: int = 0             # also return the first token's k highest logits


class PrefillCancelled(RuntimeError):
    """The request's ``cancelled()`` turned true; the engine stopped and returned nothing."""


@dataclass
class PrefillResult:
    seconds: float                          # prefill time: measured (real) or modelled (simulated)
    new_kv: list = field(default_factory=list)  # DocumentKV of prompt segments [len(cached):]
    question_tokens: int = 0
    first_token_id: Optional[int] = None
    logits: Optional[np.ndarray] = None     # first-token logits (real engines)
    load_seconds: float = 0.0               # part of `seconds` spent turning cached payloads into model KV
    top_logits: list = field(default_factory=list)  # [(token id, logit)] highest first, when asked
    extract_seconds: float = 0.0            # after the first token (and decode): copying out the new KV
    recomputed_tokens: int = 0              # approximate reuse: cached tokens computed again in context


@dataclass
class GenerateResult:
    prefill: PrefillResult
    token_ids: list          # greedy tokens, the first one is prefill.first_token_id
    decode_seconds: float


class Engine(ABC):
    """An LLM engine that can prefill on top of cached per-segment KV.

    Capabilities the controller relies on are declared here, not probed:
    ``accounts_only`` (KV is bytes on paper; no payloads), ``preemptible`` (a
    running prefill can be stopped part-way), ``decodes`` (``generate`` works),
    ``tokenizes`` (``count_tokens`` works and prompts carry token ids), ``approximates``
    (requests with ``reuse``: documents reused away from their exact path).
    """

    name: str = "engine"
    max_context: Optional[int] = None  # tokens of prompt + output the model holds (None: no known limit)
    accounts_only: bool = False
    preemptible: bool = False
    decodes: bool = False
    tokenizes: bool = False
    approximates: bool = False

    @abstractmethod
    def namespace(self, system_prompt: str = "") -> str:
        """Tree namespace: KV is reusable only between requests with the same one."""

    @abstractmethod
    def kv_bytes(self, tokens: int) -> int:
        """Logical KV bytes for ``tokens`` tokens of this engine's model."""

    @abstractmethod
    def prompt(self, doc_ids: Sequence[str], doc_tokens: Optional[Sequence[int]] = None,
               doc_texts: Optional[Sequence[str]] = None,
               doc_token_ids: Optional[Sequence[Sequence[int]]] = None, question: str = "",
               question_ids: Optional[Sequence[int]] = None, system_prompt: str = "",
               output_tokens: int = 0) -> Prompt:
        """The query's Prompt; ValueError naming what the engine cannot serve (a document
        without text, counts that disagree with the tokenizer, a prompt whose tokens plus
        ``output_tokens`` exceed ``max_context``). Changes nothing."""

    @abstractmethod
    def prefill(self, request: PrefillRequest) -> PrefillResult:
        """Compute KV for the missing segments and the question; return timing and new KV
        (of segments [len(cached):], or with ``reuse`` of those not in cached_segments)."""

    def check_window(self, prompt: Prompt, output_tokens: int) -> None:
        """ValueError when the prompt plus ``output_tokens`` exceeds ``max_context``."""
        check_window(prompt, output_tokens, self.max_context)

    def decode_seconds(self, context_tokens: int, new_tokens: int) -> float:
        """Time to generate ``new_tokens`` after prefill (0 when an engine does not model it)."""
        return 0.0

    def prefill_seconds(self, cached_tokens: int, new_tokens: int) -> Optional[float]:
        """Modelled prefill time of ``new_tokens`` on ``cached_tokens`` (None: the engine measures, not models)."""
        return None

    def generate(self, request: PrefillRequest, max_new_tokens: int = 16) -> GenerateResult:
        """Prefill, then decode ``max_new_tokens`` greedily (engines with ``decodes``)."""
        raise NotImplementedError(f"engine {self.name!r} does not decode")

    def count_tokens(self, text: str) -> int:
        """Tokens a document text occupies in the prompt (engines with ``tokenizes``)."""
        raise NotImplementedError(f"engine {self.name!r} has no tokenizer; pass doc_tokens yourself")
