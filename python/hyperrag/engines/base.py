"""The engine interface: what the serving controller asks of an LLM engine.

The controller owns the cache (which documents are cached, where, locked);
an engine only turns "KV of the cached prefix + what is missing" into the
missing KV and a first token. Simulated, transformers and vLLM engines all
implement this one interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np


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


@dataclass
class PrefillRequest:
    """One prefill: the cached prefix is doc_ids[:len(cached)]."""

    namespace: str                  # engine.namespace(system_prompt): model + system prompt
    question: str
    doc_ids: Sequence[str]
    doc_tokens: Sequence[int]       # per-document token counts as the caller knows them
    doc_texts: Optional[Sequence[str]] = None  # needed by real engines
    cached: Sequence[DocumentKV] = ()          # KV of doc_ids[:len(cached)], in order
    system_prompt: str = ""
    # Checked between forward passes by engines that can stop early: True raises PrefillCancelled.
    cancelled: Optional[Callable[[], bool]] = None


class PrefillCancelled(RuntimeError):
    """The request's ``cancelled()`` turned true; the engine stopped and returned nothing."""


@dataclass
class PrefillResult:
    seconds: float                          # prefill time: measured (real) or modelled (simulated)
    new_kv: list = field(default_factory=list)  # DocumentKV for doc_ids[len(cached):]
    question_tokens: int = 0
    first_token_id: Optional[int] = None
    logits: Optional[np.ndarray] = None     # first-token logits (real engines)
    load_seconds: float = 0.0               # part of `seconds` spent turning cached payloads into model KV


@dataclass
class GenerateResult:
    prefill: PrefillResult
    token_ids: list          # greedy tokens, the first one is prefill.first_token_id
    decode_seconds: float


class Engine(ABC):
    """An LLM engine that can prefill on top of cached per-document KV.

    Capabilities the controller relies on are declared here, not probed:
    ``accounts_only`` (KV is bytes on paper; no payloads), ``preemptible`` (a
    running prefill can be stopped part-way), ``decodes`` (``generate`` works),
    ``tokenizes`` (``count_tokens`` works).
    """

    name: str = "engine"
    max_context: Optional[int] = None  # tokens of prompt + output the model holds (None: no known limit)
    accounts_only: bool = False
    preemptible: bool = False
    decodes: bool = False
    tokenizes: bool = False

    @abstractmethod
    def namespace(self, system_prompt: str = "") -> str:
        """Tree namespace: KV is reusable only between requests with the same one."""

    @abstractmethod
    def kv_bytes(self, tokens: int) -> int:
        """Logical KV bytes for ``tokens`` tokens of this engine's model."""

    @abstractmethod
    def prefill(self, request: PrefillRequest) -> PrefillResult:
        """Compute KV for the missing documents and the question; return timing and new KV."""

    def check_documents(self, doc_ids: Sequence[str], doc_tokens: Sequence[int],
                        doc_texts: Optional[Sequence[str]]) -> None:
        """Raise ValueError naming the document the engine cannot serve as given;
        engines without texts accept all."""

    def prompt_tokens(self, doc_tokens: Sequence[int], doc_texts: Optional[Sequence[str]], question: str,
                      system_prompt: str) -> int:
        """Tokens of the whole prompt (system prompt, documents, question)."""
        return sum(int(t) for t in doc_tokens)

    def check_prompt(self, doc_ids: Sequence[str], doc_tokens: Sequence[int], doc_texts: Optional[Sequence[str]],
                     question: str, system_prompt: str, output_tokens: int) -> None:
        """Raise ValueError naming what the engine cannot serve: a document (check_documents)
        or a prompt whose tokens plus ``output_tokens`` exceed ``max_context``. The
        controller calls it for every query before touching the cache."""
        self.check_documents(doc_ids, doc_tokens, doc_texts)
        if self.max_context is None:
            return
        prompt = self.prompt_tokens(doc_tokens, doc_texts, question, system_prompt)
        if prompt + output_tokens > self.max_context:
            raise ValueError(
                f"the prompt has {prompt} tokens ({sum(int(t) for t in doc_tokens)} in {len(doc_tokens)} documents) "
                f"and output_tokens={output_tokens}: {prompt + output_tokens} tokens exceed the model's context "
                f"window of {self.max_context}")

    def document_fingerprints(self, doc_tokens: Sequence[int], doc_texts: Optional[Sequence[str]]) -> List[str]:
        """A fingerprint of each document's content, part of its cache key
        (hyperrag.cache.identity): engines that tokenize hash the exact token ids.
        This default, for engines without texts, uses the token count, the only
        content they know: a document re-sent with another length is another one."""
        return [f"n{int(t)}" for t in doc_tokens]

    def decode_seconds(self, context_tokens: int, new_tokens: int) -> float:
        """Time to generate ``new_tokens`` after prefill (0 when an engine does not model it)."""
        return 0.0

    def prefill_seconds(self, cached_tokens: int, new_tokens: int) -> Optional[float]:
        """Modelled prefill time of ``new_tokens`` on ``cached_tokens`` (None: the engine measures, not models)."""
        return None

    def estimate_question_tokens(self, question: str) -> int:
        """Tokens of a question, for scheduling estimates (about 4 characters a token)."""
        return max(1, len(question) // 4)

    def generate(self, request: PrefillRequest, max_new_tokens: int = 16) -> GenerateResult:
        """Prefill, then decode ``max_new_tokens`` greedily (engines with ``decodes``)."""
        raise NotImplementedError(f"engine {self.name!r} does not decode")

    def count_tokens(self, text: str) -> int:
        """Tokens a document text occupies in the prompt (engines with ``tokenizes``)."""
        raise NotImplementedError(f"engine {self.name!r} has no tokenizer; pass doc_tokens yourself")
