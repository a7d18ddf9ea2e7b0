"""Approximate reuse in the transformers engine (hyperrag.engines.approximate_reuse).

What must hold exactly: the forms it stores equal a document computed on the system
prompt alone; with nothing cached, or with every re-positioned token recomputed, the
answer equals a full prefill; the first document needs no recompute. What is only
approximate (a budget below 1) is measured in bench/bench_approx_reuse.py, not here.
"""
import numpy as np
import pytest
import torch

from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401
from hyperrag.engines.approximate_reuse import ApproximateReuse, first_tokens
from hyperrag.engines.base import PrefillRequest
from hyperrag.engines.hf_models import dynamic_cache

DOCS = ["doc-0003", "doc-0007", "doc-0001"]


@pytest.fixture(scope="module")
def texts(tiny_texts):  # noqa: F811
    return {d: tiny_texts[d] for d in DOCS}


def prompt_of(engine, texts, docs, question="What do they say?"):
    return engine.prompt(docs, doc_texts=[texts[d] for d in docs], question=question)


def alone(engine, prompt, i):
    """Segment i's KV computed on the system prompt alone: the position-independent form."""
    system = prompt.token_ids[0]
    cache = dynamic_cache(engine.model)
    ids = list(system) + list(prompt.token_ids[i])
    with torch.inference_mode():
        engine.model(input_ids=torch.tensor([ids]), use_cache=True, **{engine._cache_arg: cache})
    return torch.stack([torch.stack([layer.keys[0, :, len(system):], layer.values[0, :, len(system):]])
                        for layer in cache.layers])


def forms_of(engine, texts, docs):
    """The forms a cold approximate request computes, by segment id."""
    prompt = prompt_of(engine, texts, docs)
    out = engine.generate(PrefillRequest(engine.namespace(), prompt, reuse=ApproximateReuse("none", 0)), 2)
    return {kv.doc_id: kv for kv in out.prefill.new_kv}


def tensor(engine, kv):
    return engine._payload_tensor(kv)


def test_cold_request_equals_full_prefill_and_stores_exact_forms(tiny_engine, texts):  # noqa: F811
    prompt = prompt_of(tiny_engine, texts, DOCS)
    full = tiny_engine.generate(PrefillRequest(tiny_engine.namespace(), prompt), 8)
    cold = tiny_engine.generate(PrefillRequest(tiny_engine.namespace(), prompt,
                                               reuse=ApproximateReuse("deviation", 0.3, probe_layer=0)), 8)
    assert cold.token_ids == full.token_ids
    np.testing.assert_allclose(cold.prefill.logits, full.prefill.logits, atol=1e-4, rtol=0)
    assert [kv.doc_id for kv in cold.prefill.new_kv] == list(prompt.segment_ids)
    assert cold.prefill.recomputed_tokens == 0  # nothing was reused, so nothing re-computed
    for i in range(1, len(prompt.segment_ids)):
        torch.testing.assert_close(tensor(tiny_engine, cold.prefill.new_kv[i]), alone(tiny_engine, prompt, i),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["first_k", "deviation"])
def test_recomputing_every_moved_token_equals_full_prefill(tiny_engine, texts, policy):  # noqa: F811
    forms = forms_of(tiny_engine, texts, DOCS)
    order = [DOCS[2], DOCS[0], DOCS[1]]  # every document at a new place
    prompt = prompt_of(tiny_engine, texts, order)
    full = tiny_engine.generate(PrefillRequest(tiny_engine.namespace(), prompt), 8)
    cached = [forms[s] for s in prompt.segment_ids]
    out = tiny_engine.generate(PrefillRequest(tiny_engine.namespace(), prompt, cached=cached,
                                              cached_segments=list(range(len(cached))),
                                              reuse=ApproximateReuse(policy, 1.0, probe_layer=0)), 8)
    assert out.token_ids == full.token_ids
    np.testing.assert_allclose(out.prefill.logits, full.prefill.logits, atol=1e-4, rtol=0)
    assert out.prefill.recomputed_tokens == sum(prompt.segment_tokens[2:])
    assert out.prefill.new_kv == []


def test_first_document_is_exact_and_pure_reuse_is_not(tiny_engine, texts):  # noqa: F811
    forms = forms_of(tiny_engine, texts, DOCS)
    ns = tiny_engine.namespace()
    one = prompt_of(tiny_engine, texts, [DOCS[1]])
    full = tiny_engine.generate(PrefillRequest(ns, one), 4)
    reused = tiny_engine.generate(PrefillRequest(ns, one, cached=[forms[s] for s in one.segment_ids],
                                                 reuse=ApproximateReuse("none", 0)), 4)
    np.testing.assert_allclose(reused.prefill.logits, full.prefill.logits, atol=1e-4, rtol=0)
    three = prompt_of(tiny_engine, texts, DOCS)
    full3 = tiny_engine.generate(PrefillRequest(ns, three), 1)
    pure = tiny_engine.generate(PrefillRequest(ns, three, cached=[forms[s] for s in three.segment_ids],
                                               reuse=ApproximateReuse("none", 0)), 1)
    # Without cross-document attention the logits differ: the approximation is real.
    assert np.abs(pure.prefill.logits - full3.prefill.logits).max() > 1e-3


def test_missing_documents_between_cached_ones(tiny_engine, texts):  # noqa: F811
    """A document without a stored form is computed in place (whole), the others reused;
    with every reused token recomputed the answer is the full prefill's, and the form
    stored for the missing document is exact."""
    forms = forms_of(tiny_engine, texts, DOCS)
    ns = tiny_engine.namespace()
    prompt = prompt_of(tiny_engine, texts, DOCS)
    segments = [0, 1, 3]  # the second document (segment 2) is missing
    out = tiny_engine.generate(PrefillRequest(ns, prompt, cached=[forms[prompt.segment_ids[i]] for i in segments],
                                              cached_segments=segments, reuse=ApproximateReuse("first_k", 1.0)), 6)
    full = tiny_engine.generate(PrefillRequest(ns, prompt), 6)
    assert out.token_ids == full.token_ids
    np.testing.assert_allclose(out.prefill.logits, full.prefill.logits, atol=1e-4, rtol=0)
    assert [kv.doc_id for kv in out.prefill.new_kv] == [DOCS[1]]
    torch.testing.assert_close(tensor(tiny_engine, out.prefill.new_kv[0]), alone(tiny_engine, prompt, 2),
                               atol=1e-5, rtol=0)
    # Recomputed: segment 3's tokens (segment 2 was missing, so computed, not re-computed).
    assert out.prefill.recomputed_tokens == prompt.segment_tokens[3]


def test_budget_selects_the_share_it_says():
    assert first_tokens([(10, 100), (200, 7)], 0.05) == list(range(10, 15)) + [200]
    assert ApproximateReuse("deviation", 0.15).tokens(200) == 30
    assert ApproximateReuse("deviation", 1.0).tokens(7) == 7


@pytest.mark.parametrize("kwargs,match", [
    (dict(policy="blend"), "recompute policy 'blend' is unknown; allowed: none, first_k, deviation"),
    (dict(budget=1.5), r"recompute budget must be a number in \[0, 1\]"),
    (dict(budget="0.1"), r"recompute budget must be a number in \[0, 1\]"),
    (dict(policy="none", budget=0.1), "policy 'none' takes budget 0"),
    (dict(policy="first_k", budget=0), "policy 'none' takes budget 0 and the other policies a budget > 0"),
    (dict(probe_layer=-1), "probe_layer must be an int >= 0"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ApproximateReuse(**kwargs)


def test_bad_requests_are_refused_before_any_compute(tiny_engine, texts):  # noqa: F811
    forms = forms_of(tiny_engine, texts, DOCS)
    ns = tiny_engine.namespace()
    prompt = prompt_of(tiny_engine, texts, DOCS)
    cached = [forms[prompt.segment_ids[i]] for i in (0, 2)]
    with pytest.raises(ValueError, match="scattered segments need reuse=ApproximateReuse"):
        tiny_engine.prefill(PrefillRequest(ns, prompt, cached=cached, cached_segments=[0, 2]))
    with pytest.raises(ValueError, match="cached_segments must be 2 increasing segment indices in 0..3"):
        tiny_engine.prefill(PrefillRequest(ns, prompt, cached=cached, cached_segments=[2, 0],
                                           reuse=ApproximateReuse()))
    with pytest.raises(ValueError, match="must start with 0"):
        tiny_engine.prefill(PrefillRequest(ns, prompt, cached=cached[1:], cached_segments=[2],
                                           reuse=ApproximateReuse()))
    with pytest.raises(ValueError, match=r"cached\[1\].doc_id is 'doc-0007' but segment 3 is 'doc-0001'"):
        tiny_engine.prefill(PrefillRequest(ns, prompt, cached=cached, cached_segments=[0, 3],
                                           reuse=ApproximateReuse()))
    with pytest.raises(ValueError, match="probe_layer 1 leaves no layer to recompute"):
        tiny_engine.prefill(PrefillRequest(ns, prompt, cached=[forms[s] for s in prompt.segment_ids],
                                           reuse=ApproximateReuse("deviation", 0.2, probe_layer=1)))


# ----------------------------------------------------------------- the controller
def controller(engine, cache=None, **options):
    from hyperrag.cache import KVCache
    from hyperrag.serve import PipelineTiming, RAGServeController

    kv = engine.kv_bytes(1)
    cache = cache if cache is not None else KVCache({"gpu": 4000 * kv, "host": 8000 * kv}, policy="lru",
                                                     block_bytes=4096)
    return RAGServeController(engine, cache, PipelineTiming(), speculative=False, default_output_tokens=5,
                              **options)


def queries(texts, n, seed=0):
    import random

    from hyperrag.serve import Query

    rng = random.Random(seed)
    ids = sorted(texts)
    out = []
    for j in range(n):
        docs = rng.sample(ids, 3)
        out.append(Query(f"q{j}", f"Question {j}: what do they say?", docs, doc_texts=[texts[d] for d in docs]))
    return out


def test_controller_reuses_documents_at_any_place(tiny_engine, tiny_texts):  # noqa: F811
    texts = {d: tiny_texts[d] for d in sorted(tiny_texts)[:5]}
    exact = controller(tiny_engine)
    approx = controller(tiny_engine, reuse="approximate", recompute_policy="first_k", recompute_budget=1.0)
    stream = queries(texts, 10)
    served = [(exact.process(q), approx.process(q)) for q in stream]
    for (e, a), q in zip(served, stream):
        assert a.output_token_ids == e.output_token_ids, q.query_id  # full recompute: a full prefill's answer
    seen, reused = set(), 0
    for (_, a), q in zip(served, stream):
        assert a.matched_docs == len(seen & set(q.doc_ids))  # every document seen before, wherever it stands
        reused += a.matched_docs
        seen |= set(q.doc_ids)
    assert reused > sum(e.matched_docs for e, _ in served)  # more than exact prefixes reuse
    tree = approx.cache.tree
    assert tree.stats().num_nodes == 1 + len(texts)  # the system prompt and one form per document
    assert tree.check_invariants() == [] and all(tree.node(n).lock_count == 0 for n in tree.node_ids())
    assert approx.metrics().queries == len(stream)


def test_pure_reuse_recomputes_nothing_and_shares_exact_nodes(tiny_engine, tiny_texts):  # noqa: F811
    """A form is the exact node [system, document]: an exact controller's first documents
    serve approximate reuse from the same cache."""
    texts = {d: tiny_texts[d] for d in sorted(tiny_texts)[:4]}
    exact = controller(tiny_engine)
    ids = sorted(texts)
    from hyperrag.serve import Query

    exact.process(Query("e", "Q?", ids[:3], doc_texts=[texts[d] for d in ids[:3]]))
    approx = controller(tiny_engine, cache=exact.cache, reuse="approximate", recompute_policy="none",
                        recompute_budget=0)
    r = approx.process(Query("a", "Q?", [ids[3], ids[0]], doc_texts=[texts[ids[3]], texts[ids[0]]]))
    assert r.matched_docs == 1 and r.recomputed_tokens == 0 and r.stored_docs == 1
    r = approx.process(Query("b", "Q?", [ids[1], ids[3], ids[0]], doc_texts=[texts[d] for d in (ids[1], ids[3], ids[0])]))
    assert r.matched_docs == 2  # ids[3] (stored by "a") and ids[0]; ids[1] sits below ids[0] only
    assert r.recomputed_tokens == 0 and r.cache_hit


@pytest.mark.parametrize("options,error,match", [
    (dict(reuse="fuzzy"), ValueError, "reuse 'fuzzy' is unknown; allowed: exact, approximate"),
    (dict(reuse="approximate", recompute_policy="blend"), ValueError, "recompute policy 'blend' is unknown"),
    (dict(reuse="approximate", recompute_budget=2), ValueError, r"recompute budget must be a number in \[0, 1\]"),
    (dict(reuse="approximate", recompute_policy="deviation", recompute_budget=0.2), ValueError,
     "probe_layer 1 leaves no layer to recompute: this model has 2 layers"),
])
def test_bad_controller_options_are_refused(tiny_engine, options, error, match):  # noqa: F811
    with pytest.raises(error, match=match):
        controller(tiny_engine, **options)


def test_approximate_reuse_needs_an_engine_that_can_move_kv():
    from hyperrag import RAGOptimize, RAGOptimizeConfig

    with pytest.raises(ValueError, match="reuse='approximate' needs an engine that re-positions KV"):
        RAGOptimize(RAGOptimizeConfig()).build_controller(reuse="approximate")
