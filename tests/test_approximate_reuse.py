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
