"""KVReuseReranker: reused document KV scores like recomputing it, in both layouts and dtypes.

The reference for the batched, padded forwards is the model run on one
candidate's unpadded token ids; the reference for reuse is the same layout
computed in full (reuse=False).
"""
import threading

import numpy as np
import pytest
import torch

from engine_fixtures import tiny_model_dir  # noqa: F401
from hyperrag.cache.segment_store import SegmentStore
from hyperrag.data import load_corpus, load_queries
from hyperrag.rerank import KVReuseReranker

# bf16 scores move with the forward's shape alone: the same full prefill batched vs one
# candidate at a time differed by up to 0.381 over 240 pairs (bench/bench_rerank.py,
# fidelity, yes/no; mean 0.073), and the top 5 of 20 overlapped 0.78. Reuse and int8 KV
# must stay within that variation: reuse measured 0.316, int8 0.238.
BF16_SCORE_TOLERANCE = 0.4
INT8_SCORE_TOLERANCE = 0.4
# Random scores would overlap 5/12 = 0.42 in the top 5 of 12; the model's own variation 0.78.
MIN_TOP5_OVERLAP = 0.6


@pytest.fixture(scope="module")
def corpus():
    return {d.doc_id: d.text for d in load_corpus()}


def candidate_sets(corpus, queries=5, per_query=12, seed=0):
    """Queries with their target and random others; later queries repeat some earlier
    candidates, so a run mixes stored and computed document KV."""
    rng = np.random.default_rng(seed)
    ids = sorted(corpus)
    pool = list(rng.choice(ids, per_query * 2, replace=False))
    out = []
    for q in [q for q in load_queries() if q.target in corpus][:queries]:
        others = [d for d in rng.choice(pool, per_query, replace=False) if d != q.target][:per_query - 1]
        cands = [q.target, *others]
        out.append((q.text, cands, [corpus[d] for d in cands]))
    return out


def reference_score(reranker, query, doc_text):
    """The model on one candidate's unpadded prompt: no batch, no mask, no cache."""
    tail, (doc,) = reranker._validate(query, ["d"], [doc_text])
    ids = reranker._full_ids(tail, doc)
    with torch.inference_mode():
        logits = reranker.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return float(logits[reranker.yes_token_id] - logits[reranker.no_token_id])  # float32 model: the LM head is too


@pytest.fixture(scope="module")
def tiny_rerankers(tiny_model_dir):  # noqa: F811
    path = str(tiny_model_dir)
    return {"reuse": KVReuseReranker(path, dtype="float32", max_batch=5),
            "full": KVReuseReranker(path, dtype="float32", reuse=False),
            "query_first": KVReuseReranker(path, dtype="float32", layout="query_first")}


@pytest.mark.parametrize("scoring", ["yes_no", "query_likelihood"])
def test_float32_reuse_equals_full_prefill_over_60_pairs(tiny_model_dir, corpus, scoring):  # noqa: F811
    reuse = KVReuseReranker(str(tiny_model_dir), dtype="float32", max_batch=5, scoring=scoring)
    full = KVReuseReranker(str(tiny_model_dir), dtype="float32", reuse=False, scoring=scoring)
    pairs = 0
    for query, ids, texts in candidate_sets(corpus):
        got, want = reuse.score(query, ids, texts), full.score(query, ids, texts)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        pairs += len(ids)
    stats = reuse.stats()
    assert pairs >= 50 and stats.candidates == pairs
    assert stats.reused >= 10 and stats.computed >= 10  # both paths were exercised


@pytest.mark.parametrize("layout", ["full", "query_first"])
def test_batched_padded_forward_equals_one_unpadded_candidate(tiny_rerankers, corpus, layout):
    reranker = tiny_rerankers[layout]
    query, ids, texts = candidate_sets(corpus, queries=1)[0]
    got = reranker.score(query, ids, texts)
    want = [reference_score(reranker, query, text) for text in texts]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_layouts_differ_and_rerank_orders_by_score(tiny_rerankers, corpus):
    query, ids, texts = candidate_sets(corpus, queries=1)[0]
    doc_first = tiny_rerankers["full"].score(query, ids, texts)
    query_first = tiny_rerankers["query_first"].score(query, ids, texts)
    assert not np.allclose(doc_first, query_first, atol=1e-3)
    ranked = tiny_rerankers["reuse"].rerank(query, ids, texts, top_k=4)
    assert len(ranked) == 4 and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    best = int(np.argmax(doc_first))
    assert ranked[0][0] == ids[best]


def test_index_then_fresh_process_serves_from_the_directory(tiny_model_dir, corpus, tmp_path):  # noqa: F811
    ids = sorted(corpus)[:20]
    texts = [corpus[d] for d in ids]
    first = KVReuseReranker(str(tiny_model_dir), dtype="float32", directory=tmp_path, codecs={"disk": "int8"})
    report = first.index(ids, texts)
    assert (report.documents, report.computed, report.already_cached, report.failed) == (20, 20, 0, [])
    per_doc = report.per_document()
    assert per_doc["stored_bytes"] == per_doc["raw_bytes"] > 0
    assert per_doc["disk_bytes"] <= 0.55 * per_doc["raw_bytes"] * 2  # float32 raw: int8 is ~0.27x of it
    assert first.index(ids, texts).already_cached == 20
    # A second reranker (another process would do the same) finds every document on disk.
    second = KVReuseReranker(str(tiny_model_dir), dtype="float32", directory=tmp_path, codecs={"disk": "int8"})
    query = load_queries(1)[0].text
    second.score(query, ids, texts)
    assert second.stats().reused == 20 and second.store.stats().disk_hits >= 20


def test_corrupt_blob_is_recomputed_and_counted(tiny_model_dir, corpus, tmp_path):  # noqa: F811
    ids = sorted(corpus)[:6]
    texts = [corpus[d] for d in ids]
    KVReuseReranker(str(tiny_model_dir), dtype="float32", directory=tmp_path).index(ids, texts)
    blobs = sorted(tmp_path.rglob("*.kv"), key=lambda p: p.stat().st_size)
    for blob in blobs[-3:]:  # the three largest: documents, not the instruction
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    fresh = KVReuseReranker(str(tiny_model_dir), dtype="float32", directory=tmp_path)
    full = KVReuseReranker(str(tiny_model_dir), dtype="float32", reuse=False)
    query = load_queries(1)[0].text
    np.testing.assert_allclose(fresh.score(query, ids, texts), full.score(query, ids, texts), atol=1e-4, rtol=0)
    assert fresh.store.stats().failures >= 3
    assert fresh.stats().computed == 3 and fresh.stats().reused == 3


def test_threads_score_like_one_thread(tiny_model_dir, corpus):  # noqa: F811
    reranker = KVReuseReranker(str(tiny_model_dir), dtype="float32", max_batch=4)
    sets = candidate_sets(corpus, queries=8, per_query=6, seed=1)
    serial = KVReuseReranker(str(tiny_model_dir), dtype="float32", reuse=False)
    want = [serial.score(*s) for s in sets]
    got, errors = [None] * len(sets), []

    def work(k):
        try:
            for i in range(k, len(sets), 4):
                got[i] = reranker.score(*sets[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
    tree = reranker.store.cache.tree
    assert all(tree.node(n).lock_count == 0 for n in tree.node_ids())  # every hold released


BAD_CALLS = [
    ({"query": None}, "query must be a non-empty str"),
    ({"query": "  "}, "query must be a non-empty str"),
    ({"doc_ids": ["a"]}, "must have the same length"),
    ({"doc_ids": "ab"}, "doc_ids must be a sequence of str"),
    ({"doc_texts": ["x", None]}, r"doc_texts\[1\] must be a non-empty str"),
    ({"doc_ids": ["a", "a"]}, "doc_ids must be unique"),
    ({"doc_ids": ["a", 3]}, r"doc_ids\[1\] must be a non-empty str"),
    ({"doc_texts": ["x", "word " * 5000]}, "exceeds the model's window"),
    ({"top_k": 0}, "top_k must be an int >= 1"),
]


@pytest.mark.parametrize("change,message", BAD_CALLS)
def test_bad_calls_are_refused_before_any_state_changes(tiny_rerankers, change, message):
    reranker = tiny_rerankers["reuse"]
    call = {"query": "q", "doc_ids": ["a", "b"], "doc_texts": ["alpha", "beta"], "top_k": None, **change}
    before = (reranker.stats(), reranker.store.stats(), reranker.store.cache.stats().num_nodes)
    with pytest.raises(ValueError, match=message):
        reranker.rerank(**call)
    assert (reranker.stats(), reranker.store.stats(), reranker.store.cache.stats().num_nodes) == before


@pytest.mark.parametrize("kwargs,message", [
    ({"layout": "side_by_side"}, "layout must be one of"),
    ({"layout": "query_first", "reuse": True}, "reuse=True needs layout='document_first'"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"max_batch": 0}, "max_batch must be an int >= 1"),
    ({"codecs": {"memory": "int4"}}, "codec must be 'raw', 'int8'"),
    ({"store": SegmentStore({"host": 1 << 20}), "capacities": {"host": 1}}, "either store or"),
    ({"yes_token_id": -1}, r"yes_token_id must be a token id in \[0, "),
    ({"scoring": "margin"}, "scoring must be one of"),
    ({"scoring": "query_likelihood", "layout": "query_first"}, "needs layout='document_first'"),
])
def test_bad_construction_names_the_field(tiny_model_dir, kwargs, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        KVReuseReranker(str(tiny_model_dir), **{"dtype": "float32", **kwargs})


# ------------------------------------------------------------------ SmolLM2 bf16
@pytest.fixture(scope="module")
def smollm2_pairs():
    docs = sorted(load_corpus(), key=lambda d: len(d.text))[:24]  # the shortest: keeps CI time down
    texts = {d.doc_id: d.text for d in docs}
    return candidate_sets(texts, queries=5, per_query=12, seed=2)


def top5_overlap(a, b) -> float:
    return len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5


def test_bf16_reuse_and_int8_within_the_models_own_shape_variation(smollm2_pairs):
    full = KVReuseReranker("smollm2", reuse=False)                # batches of up to 16 candidates
    single = KVReuseReranker("smollm2", reuse=False, max_batch=1)  # the same prompts, one at a time
    reuse = KVReuseReranker("smollm2", max_batch=6)
    int8 = KVReuseReranker("smollm2", codecs={"memory": "int8"})
    dev = {"shape": [], "reuse": [], "int8": []}
    overlap = {"shape": [], "int8": []}
    for query, ids, texts in smollm2_pairs:
        want = full.score(query, ids, texts)
        shape = single.score(query, ids, texts)
        got = reuse.score(query, ids, texts)
        int8.index(ids, texts)                     # every document's KV stored as int8 ...
        compressed = int8.score(query, ids, texts)  # ... and every candidate scored on it
        for name, value in (("shape", shape), ("reuse", got), ("int8", compressed)):
            dev[name].extend(np.abs(value - want))
        overlap["shape"].append(top5_overlap(shape, want))
        overlap["int8"].append(top5_overlap(compressed, want))
    assert len(dev["reuse"]) >= 50
    assert reuse.stats().reused >= 10 and reuse.stats().computed >= 10
    assert int8.stats().reused == len(dev["int8"]) and int8.stats().computed == 0
    assert max(dev["shape"]) <= BF16_SCORE_TOLERANCE  # the yardstick holds on this sample too
    assert max(dev["reuse"]) <= BF16_SCORE_TOLERANCE
    assert max(dev["int8"]) <= INT8_SCORE_TOLERANCE
    assert np.mean(overlap["shape"]) >= MIN_TOP5_OVERLAP and np.mean(overlap["int8"]) >= MIN_TOP5_OVERLAP
