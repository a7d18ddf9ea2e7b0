"""HyperRAGQueryEngine with the real llama_index.core and the tiny real model: answers equal
the controller's own for the same nodes, a repeated question reuses the cached KV, a
changed node is recomputed, and bad arguments fail before any work."""
from __future__ import annotations

import asyncio
from typing import List

import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from hyperrag import Query, RAGOptimize, RAGOptimizeConfig
from hyperrag.integrations.llama_index import HyperRAGQueryEngine
from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401
from integration_fixtures import OUTPUT_TOKENS, QUESTION, assert_same_prompt, ctrl, served  # noqa: F401



@pytest.fixture(scope="module", autouse=True)
def offline_settings():
    """No OpenAI defaults: nothing in these tests may reach the network."""
    Settings.llm = MockLLM()
    Settings.embed_model = MockEmbedding(embed_dim=8)


@pytest.fixture(scope="module")
def index(tiny_texts):
    nodes = [TextNode(id_=doc_id, text=text) for doc_id, text in tiny_texts.items()]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


class RecordingRetriever(BaseRetriever):
    """Returns fixed nodes and counts its calls (to prove validation runs first)."""
    def __init__(self, nodes: List[NodeWithScore]):
        super().__init__()
        self.nodes, self.calls = nodes, 0

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        self.calls += 1
        return list(self.nodes)


def direct_answer(ctrl, question, doc_ids, doc_texts):
    res = ctrl.process(Query(query_id="direct", text=question, doc_ids=doc_ids, doc_texts=doc_texts,
                             output_tokens=OUTPUT_TOKENS))
    return ctrl.engine.tokenizer.decode(res.output_token_ids, skip_special_tokens=True), res


def test_repeated_question_reuses_cache_and_answers_like_the_controller(ctrl, served, index, tiny_texts):
    engine = HyperRAGQueryEngine(controller=ctrl, retriever=index.as_retriever(similarity_top_k=3))
    first = engine.query(QUESTION)
    second = engine.query(QueryBundle(QUESTION))
    ids = [n.node.node_id for n in first.source_nodes]
    assert len(ids) == 3 and set(ids) <= set(tiny_texts)
    assert [n.node.node_id for n in second.source_nodes] == ids
    hit, miss = second.metadata["query_result"], first.metadata["query_result"]
    assert miss.matched_docs == 0 and not miss.cache_hit
    assert hit.matched_docs == 3 and hit.cached_tokens > 0 and hit.cache_hit and hit.doc_order == ids
    answer, direct = direct_answer(ctrl, QUESTION, ids, [tiny_texts[d] for d in ids])
    assert direct.matched_docs == 3  # the engine cached them under the node ids
    assert str(first) == str(second) == first.response == answer
    assert direct.output_token_ids == hit.output_token_ids and len(hit.output_token_ids) == OUTPUT_TOKENS
    miss_call, hit_call, direct_call = served
    assert_same_prompt(hit_call, direct_call, exact=True)
    assert_same_prompt(miss_call, direct_call)


def test_async_query_and_synthesize_from_given_nodes(ctrl, served, index, tiny_texts):
    engine = HyperRAGQueryEngine(controller=ctrl, retriever=index.as_retriever(similarity_top_k=2))
    response = asyncio.run(engine.aquery(QUESTION))
    ids = [n.node.node_id for n in response.source_nodes]
    assert str(response) == direct_answer(ctrl, QUESTION, ids, [tiny_texts[d] for d in ids])[0]
    # Nodes from elsewhere, one repeated (served once), metadata in the prompt as LlamaIndex puts it.
    a, b = sorted(tiny_texts)[:2]
    node_b = TextNode(id_=b, text=tiny_texts[b], metadata={"source": "atlas"})
    nodes = [NodeWithScore(node=TextNode(id_=a, text=tiny_texts[a])), NodeWithScore(node=node_b),
             NodeWithScore(node=TextNode(id_=a, text=tiny_texts[a]))]
    given = engine.synthesize(QueryBundle(QUESTION), nodes)
    assert given.metadata["query_result"].doc_order == [a, b] and given.source_nodes == nodes[:2]
    expected = direct_answer(ctrl, QUESTION, [a, b], [tiny_texts[a], node_b.get_content(MetadataMode.LLM)])
    assert expected[1].matched_docs == 2 and str(given) == expected[0]
    async_call, async_direct_call, given_call, given_direct_call = served
    assert_same_prompt(async_call, async_direct_call)
    assert_same_prompt(given_call, given_direct_call)


def test_changed_text_under_the_same_id_is_recomputed(ctrl, served, tiny_texts):
    doc_id = sorted(tiny_texts)[0]
    original = RecordingRetriever([NodeWithScore(node=TextNode(id_=doc_id, text=tiny_texts[doc_id]))])
    engine = HyperRAGQueryEngine(controller=ctrl, retriever=original)
    engine.query(QUESTION)
    assert engine.query(QUESTION).metadata["query_result"].matched_docs == 1
    changed_text = tiny_texts[doc_id] + " Revised: the figures above were corrected."
    changed = engine.synthesize(QueryBundle(QUESTION), [NodeWithScore(node=TextNode(id_=doc_id, text=changed_text))])
    assert changed.metadata["query_result"].matched_docs == 0
    answer, direct = direct_answer(ctrl, QUESTION, [doc_id], [changed_text])
    assert direct.matched_docs == 1 and str(changed) == answer
    original_call, _, changed_call, direct_call = served
    assert changed_call[0] != original_call[0]  # same id, another content fingerprint
    assert_same_prompt(changed_call, direct_call)


def test_bad_constructor_arguments(ctrl, index):
    retriever = index.as_retriever()
    simulated = RAGOptimize(RAGOptimizeConfig()).build_controller()
    silent = RAGOptimize(RAGOptimizeConfig()).build_controller(engine=ctrl.engine, default_output_tokens=0)
    cases = [
        (dict(controller=None, retriever=retriever), TypeError, "controller must be a hyperrag RAGServeController"),
        (dict(controller=simulated, retriever=retriever), ValueError, "tokenizer"),
        (dict(controller=ctrl, retriever=index), TypeError, "retriever must be a llama_index BaseRetriever"),
        (dict(controller=ctrl, retriever=None), TypeError, "retriever must be a llama_index BaseRetriever"),
        (dict(controller=ctrl, retriever=retriever, output_tokens=-1), ValueError, "output_tokens must be None or an"),
        (dict(controller=silent, retriever=retriever), ValueError, "default_output_tokens is 0"),
        (dict(controller=ctrl, retriever=retriever, metadata_mode="llm"), TypeError, "metadata_mode must be a"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            HyperRAGQueryEngine(**kwargs)


def test_bad_inputs_fail_before_retrieval_or_serving(ctrl, tiny_texts):
    doc_id = sorted(tiny_texts)[0]
    recording = RecordingRetriever([NodeWithScore(node=TextNode(id_=doc_id, text=tiny_texts[doc_id]))])
    engine = HyperRAGQueryEngine(controller=ctrl, retriever=recording)
    cases = [
        ("", ValueError, "question must be a non-empty str"),
        (QueryBundle("  "), ValueError, "question must be a non-empty str"),
        (42, TypeError, "question must be a str or a QueryBundle"),
        (QueryBundle(None), TypeError, "question must be a str or a QueryBundle"),
    ]
    for value, error, message in cases:
        with pytest.raises(error, match=message):
            engine.query(value)
    with pytest.raises(ValueError, match="question must be a non-empty str"):
        asyncio.run(engine.aquery(""))
    assert recording.calls == 0
    with pytest.raises(TypeError, match="nodes must be a list of llama_index NodeWithScore"):
        engine.synthesize(QueryBundle(QUESTION), [TextNode(id_=doc_id, text="x")])
    conflicting = [NodeWithScore(node=TextNode(id_="same", text="one text")),
                   NodeWithScore(node=TextNode(id_="same", text="another"))]
    with pytest.raises(ValueError, match="share the id 'same'"):
        engine.synthesize(QueryBundle(QUESTION), conflicting)
    assert ctrl.metrics().queries == 0
    with pytest.raises(ValueError, match="the retriever returned none"):
        HyperRAGQueryEngine(controller=ctrl, retriever=RecordingRetriever([])).query(QUESTION)
