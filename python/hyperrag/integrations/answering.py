"""What the framework integrations share: checking the controller they answer
through, and answering a question from (id, text) documents with it."""
from __future__ import annotations

import uuid
from typing import List, Optional, Sequence, Tuple

from hyperrag.serve import Query, QueryResult, RAGServeController


def check_controller(controller, output_tokens: Optional[int]) -> None:
    """TypeError/ValueError unless ``controller`` can answer in text with ``output_tokens`` tokens."""
    if not isinstance(controller, RAGServeController):
        raise TypeError("controller must be a hyperrag RAGServeController (from RAGOptimize(...)"
                        f".build_controller(engine='transformers', ...)), got {type(controller).__name__}")
    if getattr(controller.engine, "tokenizer", None) is None:
        raise ValueError(f"controller's engine must have a tokenizer to turn answers into text "
                         f"(engine='transformers'), got engine {controller.engine.name!r}")
    if output_tokens is not None and (isinstance(output_tokens, bool) or not isinstance(output_tokens, int)
                                      or output_tokens < 1):
        raise ValueError(f"output_tokens must be None or an integer >= 1, got {output_tokens!r}")
    if output_tokens is None and controller.default_output_tokens < 1:
        # Otherwise every answer would be the empty string.
        raise ValueError("output_tokens must be set (an integer >= 1) when the controller's "
                         "default_output_tokens is 0")


def unique_documents(documents: Sequence[Tuple[str, str]], noun: str = "document") -> List[int]:
    """Positions of the documents to serve: a repeated (id, text) kept once, where it ranked
    first; ValueError for no documents or one id with two texts."""
    if not documents:
        raise ValueError(f"no {noun}s to answer from: the retriever returned none; "
                         "HyperRAG serves a question with at least one document")
    kept, texts = [], {}
    for i, (doc_id, text) in enumerate(documents):
        if doc_id in texts:
            if texts[doc_id] != text:
                raise ValueError(f"two {noun}s share the id {doc_id!r} but differ in text; "
                                 f"give each {noun} its own id")
            continue
        texts[doc_id] = text
        kept.append(i)
    return kept


def answer(controller: RAGServeController, question: str, documents: Sequence[Tuple[str, str]],
           output_tokens: Optional[int]) -> Tuple[str, QueryResult]:
    """The decoded answer and the QueryResult of one query (its own id, so calls from many
    threads never collide) over unique (id, text) documents."""
    result = controller.process(Query(query_id=uuid.uuid4().hex, text=question, doc_ids=[d for d, _ in documents],
                                      doc_texts=[t for _, t in documents], output_tokens=output_tokens))
    text = controller.engine.tokenizer.decode(result.output_token_ids, skip_special_tokens=True)
    return text, result
