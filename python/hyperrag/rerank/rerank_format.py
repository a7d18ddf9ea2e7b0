"""The reranker's prompt: four parts, laid out document-first or query-first.

Each part is tokenized on its own and the parts concatenated, so a part's
token ids never depend on its neighbours and both layouts use the same ids:

- document_first: [instruction][document] | [question][judge]
  The left half depends only on the document: its KV is computed once per
  document and reused for every query.
- query_first:    [instruction][question][document][judge]
  The conventional cross-encoder order (bge-reranker and Qwen3-Reranker put
  the query first); nothing after the instruction is reusable across queries.

The score is logit(yes) - logit(no) for the token right after [judge].
"""
from __future__ import annotations

from dataclasses import dataclass

LAYOUTS = ("document_first", "query_first")


@dataclass(frozen=True)
class RerankFormat:
    """Templates of the parts (each but ``judge`` holds ``{text}`` once) and the answer words."""

    instruction: str
    document: str
    question: str
    judge: str
    yes: str = "yes"
    no: str = "no"

    def __post_init__(self):
        for name in ("instruction", "document", "question", "judge", "yes", "no"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"RerankFormat.{name} must be a str, got {type(getattr(self, name)).__name__}")
        for name in ("document", "question"):
            if getattr(self, name).count("{text}") != 1:
                raise ValueError(f"RerankFormat.{name} must hold {{text}} exactly once, got {getattr(self, name)!r}")

    @staticmethod
    def for_tokenizer(tokenizer) -> "RerankFormat":
        """ChatML when the tokenizer knows its markers (SmolLM2-Instruct), plain text otherwise."""
        if "<|im_start|>" in tokenizer.get_vocab():
            return RerankFormat(
                instruction="<|im_start|>system\nYou judge whether a document answers a question.<|im_end|>\n"
                            "<|im_start|>user\n",
                document="Document: {text}\n\n",
                question="Question: {text}\n\n",
                judge="Does the document answer the question? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n",
            )
        return RerankFormat(instruction="Judge whether the document answers the question.\n\n",
                            document="Document: {text}\n\n", question="Question: {text}\n\n",
                            judge="Does the document answer the question? Answer yes or no.\nAnswer:",
                            yes=" yes", no=" no")
