"""HyperRAGRunnable with the real langchain_core and the tiny real model: answers equal the
controller's own for the same documents, a repeated question reuses the cached KV,
a changed document is recomputed, and bad arguments fail before any work."""
from __future__ import annotations

from typing import List

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore

from hyperrag import Query, RAGOptimize, RAGOptimizeConfig
from hyperrag.integrations.langchain import HyperRAGRunnable, content_id, document_id
from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401
from integration_fixtures import OUTPUT_TOKENS, QUESTION, assert_same_prompt, ctrl, served  # noqa: F401



@pytest.fixture(scope="module")
def retriever(tiny_texts):
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(id=doc_id, page_content=text) for doc_id, text in tiny_texts.items()])
    return store.as_retriever(search_kwargs={"k": 3})


class RecordingRetriever(BaseRetriever):
    """Returns fixed documents and counts its calls (to prove validation runs first)."""
    documents: List[Document] = []
    calls: int = 0

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> List[Document]:
        self.calls += 1
        return list(self.documents)


def direct_answer(ctrl, question, doc_ids, doc_texts):
    res = ctrl.process(Query(query_id="direct", text=question, doc_ids=doc_ids, doc_texts=doc_texts,
                             output_tokens=OUTPUT_TOKENS))
    return ctrl.engine.tokenizer.decode(res.output_token_ids, skip_special_tokens=True), res


def test_repeated_question_reuses_cache_and_answers_like_the_controller(ctrl, served, retriever, tiny_texts):
    chain = HyperRAGRunnable(controller=ctrl, retriever=retriever, return_result=True)
    first = chain.invoke(QUESTION)
    second = chain.invoke({"question": QUESTION})
    ids = [d.id for d in first["documents"]]
    assert len(ids) == 3 and set(ids) <= set(tiny_texts)
    assert [d.id for d in second["documents"]] == ids
    assert first["result"].matched_docs == 0 and not first["result"].cache_hit
    assert second["result"].matched_docs == 3 and second["result"].cached_tokens > 0 and second["result"].cache_hit
    assert second["result"].doc_order == ids
    answer, direct = direct_answer(ctrl, QUESTION, ids, [tiny_texts[d] for d in ids])
    assert direct.matched_docs == 3  # the chain cached them under the same ids
    assert first["answer"] == second["answer"] == answer
    assert direct.output_token_ids == second["result"].output_token_ids
    assert len(direct.output_token_ids) == OUTPUT_TOKENS
    miss_call, hit_call, direct_call = served
    assert_same_prompt(hit_call, direct_call, exact=True)
    assert_same_prompt(miss_call, direct_call)


def test_composes_in_a_chain_and_batches(ctrl, served, retriever, tiny_texts):
    chain = HyperRAGRunnable(controller=ctrl, retriever=retriever)
    questions = [QUESTION, "What happened in the final year?", "Who founded it?"]
    expected = []
    for q in questions:
        ids = [d.id for d in retriever.invoke(q)]
        expected.append(direct_answer(ctrl, q, ids, [tiny_texts[d] for d in ids])[0])
    assert all(isinstance(a, str) and a for a in expected)
    assert chain.batch(questions) == expected  # served from several threads at once
    direct_calls, batch_calls = served[:3], served[3:]
    assert len({call[:2] for call in direct_calls}) == 3  # three different prompts
    for call in batch_calls:  # the threads finish in any order
        assert_same_prompt(call, next(d for d in direct_calls if d[:2] == call[:2]))
    pipeline = RunnableLambda(lambda x: x["q"]) | chain | RunnableLambda(lambda answer: answer.upper())
    assert pipeline.invoke({"q": questions[1]}) == expected[1].upper()
    assert chain.get_name() == "HyperRAGRunnable"


def test_documents_given_in_the_input_and_their_ids(ctrl, tiny_texts):
    a, b, c = sorted(tiny_texts)[:3]
    docs = [Document(id=a, page_content=tiny_texts[a]),
            Document(page_content=tiny_texts[b], metadata={"doc_id": b}),
            Document(page_content=tiny_texts[c]),
            Document(page_content=tiny_texts[c])]  # a repeat: served once
    chain = HyperRAGRunnable(controller=ctrl, return_result=True)  # no retriever: documents come with the input
    first = chain.invoke({"question": QUESTION, "documents": docs})
    assert first["result"].doc_order == [a, b, content_id(tiny_texts[c])]
    assert first["documents"] == docs[:3]
    again = chain.invoke({"question": QUESTION, "documents": docs[:3]})
    assert again["result"].matched_docs == 3 and again["answer"] == first["answer"]
    # id_keys chooses the metadata key; the first one present wins.
    tagged = Document(page_content="x", metadata={"id": "from-id", "doc_id": "from-doc-id", "key": 7})
    assert document_id(tagged) == "from-id"
    assert document_id(tagged, ("key", "id")) == "7"
    assert document_id(Document(id="own", page_content="x", metadata={"id": "m"})) == "own"


def test_content_id_is_stable_across_processes():
    # A fixed value: ids must not depend on Python's per-process salted hash().
    assert content_id("HyperRAG") == "blake2b-488f49b87fa64decef090c87ec085600"
    assert content_id("HyperRAG ") != content_id("HyperRAG")


def test_changed_text_under_the_same_id_is_recomputed(ctrl, served, tiny_texts):
    doc_id = sorted(tiny_texts)[0]
    chain = HyperRAGRunnable(controller=ctrl, return_result=True)
    original = [Document(id=doc_id, page_content=tiny_texts[doc_id])]
    chain.invoke({"question": QUESTION, "documents": original})
    assert chain.invoke({"question": QUESTION, "documents": original})["result"].matched_docs == 1
    changed_text = tiny_texts[doc_id] + " Revised: the figures above were corrected."
    changed = chain.invoke({"question": QUESTION, "documents": [Document(id=doc_id, page_content=changed_text)]})
    assert changed["result"].matched_docs == 0
    answer, direct = direct_answer(ctrl, QUESTION, [doc_id], [changed_text])
    assert direct.matched_docs == 1 and changed["answer"] == answer
    original_call, _, changed_call, direct_call = served
    assert changed_call[0] != original_call[0]  # same id, another content fingerprint
    assert_same_prompt(changed_call, direct_call)


def test_bad_constructor_arguments(ctrl, retriever):
    simulated = RAGOptimize(RAGOptimizeConfig()).build_controller()
    silent = RAGOptimize(RAGOptimizeConfig()).build_controller(engine=ctrl.engine, default_output_tokens=0)
    cases = [
        (dict(controller="ctrl", retriever=retriever), TypeError, "controller must be a hyperrag RAGServeController"),
        (dict(controller=simulated, retriever=retriever), ValueError, "tokenizer"),
        (dict(controller=ctrl, retriever=lambda q: []), TypeError, "retriever must be a langchain_core BaseRetriever"),
        (dict(controller=ctrl, retriever=retriever, output_tokens=0), ValueError, "output_tokens must be None or an"),
        (dict(controller=ctrl, retriever=retriever, output_tokens=True), ValueError, "output_tokens"),
        (dict(controller=silent, retriever=retriever), ValueError, "default_output_tokens is 0"),
        (dict(controller=ctrl, retriever=retriever, id_keys="id"), TypeError, "id_keys"),
        (dict(controller=ctrl, retriever=retriever, return_result=1), TypeError, "return_result"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            HyperRAGRunnable(**kwargs)


def test_bad_inputs_fail_before_retrieval_or_serving(ctrl, tiny_texts):
    doc_id = sorted(tiny_texts)[0]
    recording = RecordingRetriever(documents=[Document(id=doc_id, page_content=tiny_texts[doc_id])])
    chain = HyperRAGRunnable(controller=ctrl, retriever=recording)
    cases = [
        ("", ValueError, "question must be a non-empty str"),
        ("   ", ValueError, "question must be a non-empty str"),
        (42, TypeError, "question must be a str"),
        ({"question": None}, TypeError, "question must be a str"),
        ({"query": QUESTION}, ValueError, "must have a 'question' key"),
        ({"question": QUESTION, "documents": "text"}, TypeError,
         "'documents' must be a list of langchain_core Document"),
        ({"question": QUESTION, "documents": [tiny_texts[doc_id]]}, TypeError, "'documents' must be a list"),
        ({"question": QUESTION, "documents": []}, ValueError, "no documents to answer from"),
    ]
    for value, error, message in cases:
        with pytest.raises(error, match=message):
            chain.invoke(value)
    assert recording.calls == 0 and ctrl.metrics().queries == 0
    with pytest.raises(ValueError, match="must bring 'documents'"):
        HyperRAGRunnable(controller=ctrl).invoke(QUESTION)
    conflicting = [Document(id="same", page_content="one text"), Document(id="same", page_content="another")]
    with pytest.raises(ValueError, match="share the id 'same'"):
        chain.invoke({"question": QUESTION, "documents": conflicting})
    with pytest.raises(TypeError, match=r"metadata\['id'\]"):
        chain.invoke({"question": QUESTION, "documents": [Document(page_content="x", metadata={"id": 1.5})]})
    assert ctrl.metrics().queries == 0
    empty = HyperRAGRunnable(controller=ctrl, retriever=RecordingRetriever(documents=[]))
    with pytest.raises(ValueError, match="the retriever returned none"):
        empty.invoke(QUESTION)
