"""HyperRAG as a LlamaIndex query engine: retrieve nodes with any LlamaIndex retriever,
answer through a RAGServeController, which reuses the cached KV of nodes it has seen before.

    from hyperrag.integrations.llama_index import HyperRAGQueryEngine
    engine = HyperRAGQueryEngine(controller=ctrl, retriever=index.as_retriever())
    response = engine.query("What is X?")

The answer is a llama_index Response: ``str(response)`` is the text, ``source_nodes``
the nodes served (node ids are the document ids) and ``metadata["query_result"]``
the controller's QueryResult. ``synthesize(query, nodes)`` answers from nodes
retrieved elsewhere.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Union

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from hyperrag.integrations.answering import answer, check_controller, unique_documents
from hyperrag.serve import RAGServeController


class HyperRAGQueryEngine(BaseQueryEngine):
    """Answer a question from retrieved nodes through a HyperRAG controller.

    controller: a RAGServeController whose engine has a tokenizer (engine="transformers").
    retriever: a LlamaIndex BaseRetriever (e.g. ``index.as_retriever(similarity_top_k=3)``).
    output_tokens: answer length in tokens (None: the controller's default_output_tokens).
    metadata_mode: which node metadata goes into the prompt with its text (LlamaIndex's
    MetadataMode; default LLM, as LlamaIndex's own synthesizers do).

    Safe to call from many threads: the controller is thread-safe and every call
    sends its own query id. ``aquery`` retrieves asynchronously and serves in a
    worker thread.
    """

    def __init__(self, controller: RAGServeController, retriever: BaseRetriever, *,
                 output_tokens: Optional[int] = None, metadata_mode: MetadataMode = MetadataMode.LLM,
                 callback_manager: Optional[CallbackManager] = None):
        check_controller(controller, output_tokens)
        if not isinstance(retriever, BaseRetriever):
            raise TypeError("retriever must be a llama_index BaseRetriever (e.g. index.as_retriever()), "
                            f"got {type(retriever).__name__}")
        if not isinstance(metadata_mode, MetadataMode):
            raise TypeError(f"metadata_mode must be a MetadataMode ({', '.join(m.name for m in MetadataMode)}), "
                            f"got {metadata_mode!r}")
        super().__init__(callback_manager=callback_manager or retriever.callback_manager)
        self.controller = controller
        self.retriever = retriever
        self.output_tokens = output_tokens
        self.metadata_mode = metadata_mode

    def query(self, str_or_query_bundle: Union[str, QueryBundle]) -> Response:
        # Checked here: the base class's start event would reject a non-str with a pydantic error.
        return super().query(_checked(str_or_query_bundle))

    async def aquery(self, str_or_query_bundle: Union[str, QueryBundle]) -> Response:
        return await super().aquery(_checked(str_or_query_bundle))

    def retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return self.retriever.retrieve(_checked(query_bundle))

    def synthesize(self, query_bundle: QueryBundle, nodes: List[NodeWithScore],
                   additional_source_nodes: Optional[Sequence[NodeWithScore]] = None) -> Response:
        """Answer from ``nodes`` (in their order, a repeated node once); additional_source_nodes
        only join the response's source_nodes, as in LlamaIndex's own engines."""
        question = _checked(query_bundle).query_str
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence) \
                or not all(isinstance(n, NodeWithScore) for n in nodes):
            raise TypeError(f"nodes must be a list of llama_index NodeWithScore, got {type(nodes).__name__}")
        identified = [(n.node.node_id, n.node.get_content(metadata_mode=self.metadata_mode)) for n in nodes]
        kept = unique_documents(identified, noun="node")
        text, result = answer(self.controller, question, [identified[i] for i in kept], self.output_tokens)
        return Response(response=text, source_nodes=[nodes[i] for i in kept] + list(additional_source_nodes or []),
                        metadata={"query_result": result})

    async def asynthesize(self, query_bundle: QueryBundle, nodes: List[NodeWithScore],
                          additional_source_nodes: Optional[Sequence[NodeWithScore]] = None) -> Response:
        # The controller is synchronous; a worker thread keeps the event loop free.
        return await asyncio.to_thread(self.synthesize, query_bundle, nodes, additional_source_nodes)

    def _query(self, query_bundle: QueryBundle) -> Response:
        return self.synthesize(query_bundle, self.retrieve(query_bundle))

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        nodes = await self.retriever.aretrieve(query_bundle)
        return await self.asynthesize(query_bundle, nodes)

    def _get_prompt_modules(self) -> Dict[str, Any]:
        return {}  # the prompt template is the HyperRAG engine's, not a LlamaIndex prompt


def _checked(query: Union[str, QueryBundle]) -> QueryBundle:
    """The query as a QueryBundle with a non-empty question; raised before any retrieval."""
    if isinstance(query, str):
        query = QueryBundle(query)
    if not isinstance(query, QueryBundle) or not isinstance(query.query_str, str):
        shown = query.query_str if isinstance(query, QueryBundle) else query
        raise TypeError(f"question must be a str or a QueryBundle with a str query_str, got {type(shown).__name__}")
    if not query.query_str.strip():
        raise ValueError("question must be a non-empty str, got only whitespace or nothing")
    return query
