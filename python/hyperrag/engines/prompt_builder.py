"""RAG prompts as token ids: one tokenizer and one template for every engine of a model.

``PromptBuilder`` turns a query (system prompt, documents as texts or token
ids, question) into a ``Prompt`` of segments. The transformers engine and the
vLLM integration build prompts with it, so both see the same token ids for the
same query and KV computed by one serves the other.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..cache.identity import token_fingerprint
from .base import SYSTEM_SEGMENT, Prompt, check_window

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer the question using the documents."
MEMO_ENTRIES = 4096  # tokenized texts kept (documents and system prompts repeat)


@dataclass(frozen=True)
class PromptFormat:
    """Templates of the three prompt parts; each holds ``{text}`` exactly once.

    The system part is tokenized with the tokenizer's special tokens (BOS), the
    others without. Callers with their own tokenization pass token ids in the
    Query instead (doc_token_ids, question_ids).
    """

    system: str
    document: str
    question: str

    def __post_init__(self):
        for name in ("system", "document", "question"):
            template = getattr(self, name)
            if not isinstance(template, str) or template.count("{text}") != 1:
                raise ValueError(f"PromptFormat.{name} must be a str holding {{text}} exactly once, got {template!r}")

    @staticmethod
    def for_tokenizer(tokenizer) -> "PromptFormat":
        """ChatML when the tokenizer knows its markers (SmolLM2), plain text otherwise."""
        if "<|im_start|>" in tokenizer.get_vocab():
            return PromptFormat(
                system="<|im_start|>system\n{text}<|im_end|>\n<|im_start|>user\n",
                document="Document: {text}\n\n",
                question="Question: {text}<|im_end|>\n<|im_start|>assistant\n",
            )
        return PromptFormat(system="{text}\n\n", document="Document: {text}\n\n", question="Question: {text}\nAnswer:")


class PromptBuilder:
    """Prompts of one model's tokenizer and template. Thread-safe (the memo is locked)."""

    def __init__(self, tokenizer, prompt_format: Optional[PromptFormat] = None,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_context: Optional[int] = None):
        if not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str, got {type(system_prompt).__name__}")
        if prompt_format is not None and not isinstance(prompt_format, PromptFormat):
            raise ValueError(f"prompt_format must be a PromptFormat, got {type(prompt_format).__name__}")
        self.tokenizer = tokenizer
        self.format = prompt_format or PromptFormat.for_tokenizer(tokenizer)
        self.system_prompt = system_prompt
        self.max_context = max_context
        self.vocab_size = len(tokenizer)
        self._memo: "OrderedDict[tuple, list[int]]" = OrderedDict()
        self._lock = threading.Lock()

    def _tokens(self, part: str, text: str) -> list:
        key = (part, text)
        with self._lock:
            ids = self._memo.get(key)
            if ids is not None:
                self._memo.move_to_end(key)
                return ids
        ids = self.tokenizer(getattr(self.format, part).format(text=text),
                             add_special_tokens=part == "system")["input_ids"]
        with self._lock:
            self._memo[key] = ids
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        return ids

    def document_ids(self, text: str) -> list:
        """Token ids of one document part, as it stands in the prompt."""
        return self._tokens("document", text)

    def system_ids(self, system_prompt: str = "") -> list:
        return self._tokens("system", system_prompt or self.system_prompt)

    def question_ids(self, question: str) -> list:
        return self._tokens("question", question)

    def prompt(self, doc_ids, doc_tokens=None, doc_texts=None, doc_token_ids=None, question="", question_ids=None,
               system_prompt="", output_tokens=0) -> Prompt:
        """[system][documents][question] as token ids: documents from doc_token_ids (exact,
        the caller's template) or doc_texts (this builder's PromptFormat); the question
        from question_ids or its text. doc_tokens, when given, must agree."""
        n = len(doc_ids)
        if doc_token_ids is not None:
            parts = [self._checked_ids(ids, f"doc_token_ids[{i}]") for i, ids in enumerate(doc_token_ids)]
            source = "doc_token_ids"
        elif doc_texts is not None:
            for i, text in enumerate(doc_texts):
                if not isinstance(text, str):
                    raise ValueError(f"doc_texts[{i}] ({doc_ids[i]!r}) must be a str, got {type(text).__name__}")
            parts = [self.document_ids(text) for text in doc_texts]
            source = "doc_texts"
        else:
            raise ValueError("doc_texts or doc_token_ids is required by engines that tokenize (one per doc_id)")
        if len(parts) != n or (doc_tokens is not None and len(doc_tokens) != n):
            raise ValueError(f"doc_ids ({n}), doc_tokens ({'-' if doc_tokens is None else len(doc_tokens)}) and "
                             f"{source} ({len(parts)}) must have the same length")
        for i, part in enumerate(parts):
            if not part:
                raise ValueError(f"{source}[{i}] ({doc_ids[i]!r}) has no tokens")
            if doc_tokens is not None and int(doc_tokens[i]) != len(part):
                raise ValueError(f"doc_tokens[{i}]={doc_tokens[i]} but document {doc_ids[i]!r} has {len(part)} tokens "
                                 f"in this engine's prompt; use engine.count_tokens(text) or leave doc_tokens out")
        system = self.system_ids(system_prompt)
        question = self._checked_ids(question_ids, "question_ids") if question_ids is not None \
            else self.question_ids(question)
        segments = (tuple(system), *(tuple(p) for p in parts))
        prompt = Prompt(
            segment_ids=(SYSTEM_SEGMENT, *doc_ids),
            segment_tokens=tuple(len(s) for s in segments),
            fingerprints=tuple(token_fingerprint(s) for s in segments),
            question_tokens=len(question),
            token_ids=segments,
            question_ids=tuple(question),
        )
        check_window(prompt, output_tokens, self.max_context)
        return prompt

    def _checked_ids(self, ids: Sequence[int], field: str) -> List[int]:
        ids = list(ids)
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, (int, np.integer))
                    or not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"{field} must hold token ids in [0, {self.vocab_size}), got {bad!r}")
        return [int(t) for t in ids]


def flat_token_ids(prompt: Prompt) -> List[int]:
    """The whole prompt as one list of token ids (segments, then the question)."""
    return [t for segment in prompt.token_ids for t in segment] + list(prompt.question_ids)
