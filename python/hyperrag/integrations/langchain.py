"""HyperRAG as a LangChain Runnable: retrieve with any LangChain retriever, answer through
a RAGServeController, which reuses the cached KV of documents it has seen before.

    from hyperrag.integrations.langchain import HyperRAGRunnable
    chain = HyperRAGRunnable(controller=ctrl, retriever=vectorstore.as_retriever())
    answer = chain.invoke("What is X?")

Input: a question (str), or a dict with "question" and optionally "documents" (a list
of Documents retrieved earlier in the chain; then no retriever is asked). Output: the
answer text, or with ``return_result=True`` a dict with "answer", "documents" (those
served, in retrieval order) and "result" (the controller's QueryResult).
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from langchain_core.callbacks import CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import patch_config

from hyperrag.integrations.answering import answer, check_controller, unique_documents
from hyperrag.serve import RAGServeController

DEFAULT_ID_KEYS = ("id", "doc_id")
INPUT_KEYS = ("question", "documents")


def content_id(text: str) -> str:
    """An id derived from the text alone, equal in every process (unlike Python's salted hash())."""
    return "blake2b-" + hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def document_id(document: Document, id_keys: Sequence[str] = DEFAULT_ID_KEYS) -> str:
    """Document.id when set, else the first of ``id_keys`` present in its metadata, else content_id."""
    if document.id:
        return str(document.id)
    for key in id_keys:
        value = document.metadata.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
            raise TypeError(f"metadata[{key!r}] of a document must be a str or int document id, "
                            f"got {type(value).__name__}")
        return str(value)
    return content_id(document.page_content)


class HyperRAGRunnable(Runnable[Union[str, Dict[str, Any]], Union[str, Dict[str, Any]]]):
    """Answer a question from retrieved documents through a HyperRAG controller.

    controller: a RAGServeController whose engine has a tokenizer (engine="transformers").
    retriever: a LangChain BaseRetriever, or None when every input brings its "documents".
    output_tokens: answer length in tokens (None: the controller's default_output_tokens).
    id_keys: metadata keys tried, in order, for the id of a Document whose ``id`` is unset.
    return_result: return {"answer", "documents", "result"} instead of the answer text.

    Safe to call from many threads (``batch`` does): the controller is thread-safe
    and every call sends its own query id.
    """

    def __init__(self, controller: RAGServeController, retriever: Optional[BaseRetriever] = None, *,
                 output_tokens: Optional[int] = None, id_keys: Sequence[str] = DEFAULT_ID_KEYS,
                 return_result: bool = False):
        check_controller(controller, output_tokens)
        if retriever is not None and not isinstance(retriever, BaseRetriever):
            raise TypeError("retriever must be a langchain_core BaseRetriever (e.g. vectorstore.as_retriever()) "
                            f"or None, got {type(retriever).__name__}")
        if isinstance(id_keys, str) or not all(isinstance(k, str) and k for k in id_keys):
            raise TypeError(f"id_keys must be a list of non-empty metadata key strings, got {id_keys!r}")
        if not isinstance(return_result, bool):
            raise TypeError(f"return_result must be True or False, got {return_result!r}")
        self.controller = controller
        self.retriever = retriever
        self.output_tokens = output_tokens
        self.id_keys = tuple(id_keys)
        self.return_result = return_result

    def invoke(self, input: Union[str, Dict[str, Any]], config: Optional[RunnableConfig] = None,
               **kwargs: Any) -> Union[str, Dict[str, Any]]:
        return self._call_with_config(self._serve, input, config, run_type="chain")

    def _serve(self, input: Union[str, Dict[str, Any]], run_manager: CallbackManagerForChainRun,
               config: RunnableConfig) -> Union[str, Dict[str, Any]]:
        question, documents = self._parse_input(input)
        if documents is None:
            documents = self.retriever.invoke(question, patch_config(config, callbacks=run_manager.get_child()))
        identified = [(document_id(d, self.id_keys), d.page_content) for d in documents]
        kept = unique_documents(identified)
        text, result = answer(self.controller, question, [identified[i] for i in kept], self.output_tokens)
        if self.return_result:
            return {"answer": text, "documents": [documents[i] for i in kept], "result": result}
        return text

    def _parse_input(self, input: Any) -> Tuple[str, Optional[List[Document]]]:
        """The question and the documents given with it (None: ask the retriever); checked before any work."""
        documents = None
        if isinstance(input, dict):
            if "question" not in input:
                raise ValueError(f"input dict must have a 'question' key (allowed keys: {', '.join(INPUT_KEYS)}), "
                                 f"got keys {sorted(map(str, input))}")
            question, documents = input["question"], input.get("documents")
            if documents is not None:
                if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence) \
                        or not all(isinstance(d, Document) for d in documents):
                    raise TypeError("input 'documents' must be a list of langchain_core Document, "
                                    f"got {type(documents).__name__}")
                documents = list(documents)
        else:
            question = input
        if not isinstance(question, str):
            raise TypeError(f"question must be a str (the input, or its 'question' key), got {type(question).__name__}")
        if not question.strip():
            raise ValueError("question must be a non-empty str, got only whitespace or nothing")
        if documents is None and self.retriever is None:
            raise ValueError("input must bring 'documents' when the runnable has no retriever (retriever=None)")
        return question, documents
