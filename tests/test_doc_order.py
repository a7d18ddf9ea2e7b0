"""Cache-aware document order, popularity of documents, and the reused_prefix admission policy."""
import pytest

from hyperrag import RAGOptimize, RAGOptimizeConfig
from hyperrag.serve import Query
from hyperrag.serve.popularity import DocumentPopularity


@pytest.fixture(scope="module")
def rago():
    r = RAGOptimize(RAGOptimizeConfig())
    r.optimize()
    return r


def q(qid, docs, tokens=None):
    return Query(qid, "?", list(docs), tokens or [100 + 10 * int(d[1:]) for d in docs])


def test_cache_aware_order_reuses_a_reordered_set(rago):
    for order, expected_cached in (("retrieval", 0), ("cache_aware", 3)):
        c = rago.build_controller(doc_order=order, speculative=False)
        c.process(q("a", ["d1", "d2", "d3"]))
        r = c.process(q("b", ["d2", "d1", "d3"]))
        assert r.matched_docs == expected_cached
        assert r.doc_order == (["d1", "d2", "d3"] if order == "cache_aware" else ["d2", "d1", "d3"])
        # A superset: the cached path first, the new document after it.
        r = c.process(q("c", ["d4", "d3", "d1", "d2"]))
        if order == "cache_aware":
            assert r.doc_order[:3] == ["d1", "d2", "d3"] and r.matched_docs == 3


def test_uncached_documents_go_most_requested_first(rago):
    c = rago.build_controller(doc_order="cache_aware", speculative=False)
    for i in range(5):
        c.process(q(f"w{i}", [f"d{10 + i}", "d9"]))  # d9 is requested by every query
    r = c.process(q("x", ["d7", "d8", "d9"]))
    assert r.doc_order[0] == "d9"


def test_popularity_is_bounded_by_the_working_set():
    pop = DocumentPopularity(half_life=100)
    for i in range(10_000):
        pop.observe(["hot", f"cold{i}"])
    assert len(pop) < 300
    assert pop.ranked(["cold9999", "hot", "never"]) == [1, 0, 2]
    with pytest.raises(ValueError, match="half_life"):
        DocumentPopularity(0)


def test_reused_prefix_admission_grows_paths_by_one_document_per_reuse(rago):
    c = rago.build_controller(admission="reused_prefix", speculative=False)
    docs = ["d1", "d2", "d3"]
    stored = [c.process(q(f"r{i}", docs)).stored_docs for i in range(4)]
    assert stored == [1, 1, 1, 0]  # d1, then d2 below the reused d1, then d3
    assert c.process(q("full", docs)).matched_docs == 3
    every = rago.build_controller(admission="all", speculative=False)
    assert every.process(q("a", docs)).stored_docs == 3


def test_bad_options_are_refused(rago):
    with pytest.raises(ValueError, match="doc_order 'random' is unknown; allowed: retrieval, cache_aware"):
        rago.build_controller(doc_order="random")
    with pytest.raises(ValueError, match="admission 'some' is unknown; allowed: all, reused_prefix"):
        rago.build_controller(admission="some")
