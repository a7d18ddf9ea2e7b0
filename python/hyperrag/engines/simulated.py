"""An engine whose prefill times come from the roofline cost model.

No tensors are computed: the engine only reports how long the prefill of the
missing documents and the question would take on top of the cached prefix,
and how many KV bytes each new document occupies. Everything the controller
does with the cache (match, lock, insert, evict, move blocks) stays real.
"""
from __future__ import annotations

import hashlib
from typing import Optional

from hyperrag.engines.base import DocumentKV, Engine, PrefillRequest, PrefillResult, Prompt


class SimulatedEngine(Engine):
    """Prefill timing from ``cost_model.prefill_seconds(new_tokens, cached_tokens, batch)``.

    cost_model: an ``LLMCostModel`` (or anything with that method and
    ``decode_seconds``); kv_bytes_per_token: the model's KV bytes per token;
    question_tokens: tokens of every question (the simulation has no tokenizer).
    Stateless apart from its configuration, so safe to share between threads.
    """

    name = "simulated"
    accounts_only = True  # KV is bytes on paper: the controller stores filler, never payloads
    preemptible = True    # a modelled prefill can be stopped part-way (stale speculation)

    def __init__(self, cost_model, kv_bytes_per_token: int, model_name: str = "model",
                 question_tokens: int = 32, batch_size: int = 1, max_context: Optional[int] = None):
        if int(kv_bytes_per_token) <= 0:
            raise ValueError(f"kv_bytes_per_token must be positive, got {kv_bytes_per_token!r}")
        if int(question_tokens) < 0:
            raise ValueError(f"question_tokens must be >= 0, got {question_tokens!r}")
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        if max_context is not None and int(max_context) <= 0:
            raise ValueError(f"max_context must be a positive number of tokens or None, got {max_context!r}")
        self.max_context = None if max_context is None else int(max_context)
        self.cost_model = cost_model
        self.kv_bytes_per_token = int(kv_bytes_per_token)
        self.model_name = model_name
        self.question_tokens = int(question_tokens)
        self.batch_size = int(batch_size)

    def namespace(self, system_prompt: str = "") -> str:
        digest = hashlib.sha1(system_prompt.encode("utf-8")).hexdigest()[:16]
        return f"{self.model_name}/{digest}"

    def kv_bytes(self, tokens: int) -> int:
        return int(tokens) * self.kv_bytes_per_token

    def prompt(self, doc_ids, doc_tokens=None, doc_texts=None, doc_token_ids=None, question="", question_ids=None,
               system_prompt="", output_tokens=0) -> Prompt:
        """Documents as their token counts (the simulation has no text): a document's
        fingerprint is its length, the only content it knows. The system prompt
        selects the namespace; the question has ``question_tokens``."""
        if doc_tokens is None:
            if doc_token_ids is None:
                raise ValueError("doc_tokens is required by the simulated engine (it has no tokenizer)")
            doc_tokens = [len(ids) for ids in doc_token_ids]
        tokens = tuple(int(t) for t in doc_tokens)
        prompt = Prompt(tuple(doc_ids), tokens, tuple(f"n{t}" for t in tokens), self.question_tokens)
        self.check_window(prompt, output_tokens)
        return prompt

    def prefill(self, request: PrefillRequest) -> PrefillResult:
        prompt = request.prompt
        n_cached = len(request.cached)
        if n_cached > len(prompt.segment_ids):
            raise ValueError(f"{n_cached} cached segments but the prompt has {len(prompt.segment_ids)}")
        cached_tokens = sum(int(kv.tokens) for kv in request.cached)
        new = list(zip(prompt.segment_ids[n_cached:], prompt.segment_tokens[n_cached:]))
        seconds = self.prefill_seconds(cached_tokens, sum(t for _, t in new) + self.question_tokens)
        return PrefillResult(
            seconds=seconds,
            new_kv=[DocumentKV(doc_id=d, tokens=t, nbytes=self.kv_bytes(t)) for d, t in new],
            question_tokens=self.question_tokens,
        )

    def prefill_seconds(self, cached_tokens: int, new_tokens: int) -> float:
        if new_tokens <= 0:
            return 0.0
        return float(self.cost_model.prefill_seconds(new_tokens, cached_tokens, self.batch_size))

    def decode_seconds(self, context_tokens: int, new_tokens: int) -> float:
        if new_tokens <= 0:
            return 0.0
        return float(self.cost_model.decode_seconds(context_tokens, new_tokens, self.batch_size))
