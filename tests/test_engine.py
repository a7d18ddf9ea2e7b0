"""TransformersEngine: interface, payload layout, attention path, errors (tiny random model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401
from hyperrag.engines.base import SYSTEM_SEGMENT, DocumentKV, PrefillRequest
from hyperrag.engines.prefix_attention import prefix_causal_attention
from hyperrag.engines.transformers_engine import TransformersEngine


def make_request(engine, texts, ids, cached=(), question="What is it?", namespace=None, **prompt_fields):
    fields = dict(doc_ids=list(ids), doc_texts=[texts[d] for d in ids], question=question)
    fields.update(prompt_fields)
    return PrefillRequest(namespace=engine.namespace() if namespace is None else namespace,
                          prompt=engine.prompt(**fields), cached=list(cached))


@pytest.mark.parametrize("past, new, heads, kv_heads", [
    (0, 7, 4, 2), (3, 9, 4, 2), (9, 9, 2, 2), (20, 5, 4, 1), (50, 1, 4, 2), (1, 40, 6, 3),
])
def test_prefix_attention_matches_masked_reference(past, new, heads, kv_heads):
    torch.manual_seed(past * 100 + new)
    q = torch.randn(1, heads, new, 64)
    k = torch.randn(1, kv_heads, past + new, 64)
    v = torch.randn(1, kv_heads, past + new, 64)
    out, _ = prefix_causal_attention(None, q, k, v, None, scaling=0.125)
    rep = heads // kv_heads
    kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ kr.transpose(-1, -2)) * 0.125
    visible = torch.ones(new, past + new, dtype=torch.bool).tril(past)
    expected = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1) @ vr
    assert out.shape == (1, new, heads, 64)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_sizes_and_payload_layout(tiny_engine, tiny_texts):
    eng = tiny_engine
    cfg = eng.model.config
    assert eng.kv_bytes(10) == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 64 * 4 * 10
    ids = sorted(tiny_texts)[:2]
    result = eng.prefill(make_request(eng, tiny_texts, ids))
    assert [kv.doc_id for kv in result.new_kv] == [SYSTEM_SEGMENT, *ids]  # the system prompt is a segment too
    assert result.first_token_id == int(np.argmax(result.logits)) and result.seconds > 0
    assert result.question_tokens > 0
    # The first document's payload equals the model's own KV at its position, layer by layer.
    with torch.inference_mode():
        system = eng.system_ids()
        sys_len = len(system)
        full_ids = system + eng.document_ids(tiny_texts[ids[0]])
        out = eng.model(torch.tensor([full_ids]), use_cache=True)
    assert result.new_kv[0].tokens == sys_len
    kv = result.new_kv[1]
    assert kv.tokens == eng.count_tokens(tiny_texts[ids[0]]) == len(full_ids) - sys_len
    assert kv.payload.dtype == np.uint8 and kv.payload.flags.c_contiguous
    assert kv.nbytes == kv.payload.nbytes == eng.kv_bytes(kv.tokens)
    layers = torch.from_numpy(kv.payload).view(torch.float32).view(cfg.num_hidden_layers, 2, 1, kv.tokens, 64)
    for i, layer in enumerate(out.past_key_values.layers):
        torch.testing.assert_close(layers[i, 0], layer.keys[0, :, sys_len:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layers[i, 1], layer.values[0, :, sys_len:], rtol=1e-5, atol=1e-5)


def test_full_prefill_matches_stock_transformers(tiny_engine, tiny_texts):
    eng = tiny_engine
    ids = sorted(tiny_texts)[:3]
    result = eng.prefill(make_request(eng, tiny_texts, ids, question="Where?"))
    prompt = eng.system_ids()
    for d in ids:
        prompt += eng.document_ids(tiny_texts[d])
    prompt += eng.question_ids("Where?")
    eng.model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            stock = eng.model(torch.tensor([prompt])).logits[0, -1].numpy()
    finally:
        eng.model.set_attn_implementation(eng.attn_implementation)
    np.testing.assert_allclose(result.logits, stock, rtol=1e-4, atol=1e-4)


def test_namespace_is_the_model_and_the_system_prompt_a_segment(tiny_engine, tiny_texts):
    eng = tiny_engine
    assert eng.namespace() == eng.namespace("other") and eng.model_id in eng.namespace()
    ids = sorted(tiny_texts)[:1]
    a = eng.prompt(ids, doc_texts=[tiny_texts[ids[0]]], question="?", system_prompt="Be brief.")
    b = eng.prompt(ids, doc_texts=[tiny_texts[ids[0]]], question="?")
    assert a.segment_ids == b.segment_ids == (SYSTEM_SEGMENT, ids[0])
    assert a.keys[0] != b.keys[0] and a.keys[1] == b.keys[1]  # another system prompt: another first node


def test_custom_system_prompt_is_used(tiny_engine, tiny_texts):
    eng = tiny_engine
    ids = sorted(tiny_texts)[:1]
    a = eng.prefill(make_request(eng, tiny_texts, ids, system_prompt="Be brief."))
    b = eng.prefill(make_request(eng, tiny_texts, ids))
    assert not np.allclose(a.logits, b.logits)
    assert not np.array_equal(a.new_kv[1].payload, b.new_kv[1].payload)


def test_stock_sdpa_path_also_reuses_exactly(tiny_model_dir, tiny_texts):
    eng = TransformersEngine(str(tiny_model_dir), dtype="float32", attn_implementation="sdpa")
    ids = sorted(tiny_texts)[:3]
    full = eng.generate(make_request(eng, tiny_texts, ids), 4)
    reused = eng.generate(make_request(eng, tiny_texts, ids, cached=full.prefill.new_kv[:3]), 4)
    assert reused.token_ids == full.token_ids
    np.testing.assert_allclose(reused.prefill.logits, full.prefill.logits, atol=1e-4)


# ------------------------------------------------------------------ errors
def test_missing_model_path_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        TransformersEngine(str(tmp_path / "no-such-model"))


def test_tokenizer_larger_than_embedding_is_rejected(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.vocab_size = 1000
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        TransformersEngine(str(tmp_path), dtype="float32")


def test_bad_dtype_and_attention_are_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="dtype"):
        TransformersEngine(str(tiny_model_dir), dtype="int8")
    with pytest.raises(ValueError, match="attn_implementation"):
        TransformersEngine(str(tiny_model_dir), dtype="float32", attn_implementation="nope")


def test_document_too_long_for_context_window(tmp_path):
    from hyperrag.engines.hf_models import make_tiny_llama

    eng = TransformersEngine(str(make_tiny_llama(tmp_path, max_position_embeddings=128)), dtype="float32")
    long_text = "The river flows past the mill. " * 40
    with pytest.raises(ValueError, match=r"exceed the model's context window of 128"):
        make_request(eng, {"a": "short", "b": long_text}, ["a", "b"])
    medium = "The river flows past the mill. " * 5
    request = make_request(eng, {"a": medium, "b": medium}, ["a", "b"])
    with pytest.raises(ValueError, match="exceeds the model's context window"):
        eng.generate(request, 128)  # the prompt fits, the answer does not


def _bad(kv: DocumentKV, **changes) -> DocumentKV:
    return DocumentKV(**{**kv.__dict__, **changes})


def test_bad_cached_payloads_raise_naming_the_field(tiny_engine, tiny_texts):
    eng = tiny_engine
    ids = sorted(tiny_texts)[:2]
    good = eng.prefill(make_request(eng, tiny_texts, ids)).new_kv
    assert good[0].doc_id == SYSTEM_SEGMENT
    cases = [
        (_bad(good[0], payload=good[0].payload[:-4]), r"cached\[0\].payload has \d+ bytes"),
        (_bad(good[0], payload=good[0].payload.view(np.float32)), r"cached\[0\].payload has dtype float32"),
        (_bad(good[0], payload=None), r"cached\[0\].payload must be"),
        (_bad(good[0], doc_id="zzz"), r"cached\[0\].doc_id"),
        (_bad(good[0], tokens=good[0].tokens + 1), r"cached\[0\].tokens"),
    ]
    for kv, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            eng.prefill(make_request(eng, tiny_texts, ids, cached=[kv]))
    with pytest.raises(ValueError, match="cached has 4 entries"):
        eng.prefill(make_request(eng, tiny_texts, ids, cached=list(good) + [good[0]]))


def test_bad_requests_raise(tiny_engine, tiny_texts):
    eng = tiny_engine
    ids = sorted(tiny_texts)[:2]
    with pytest.raises(ValueError, match="namespace"):
        eng.prefill(make_request(eng, tiny_texts, ids, namespace="other-model/sys"))
    with pytest.raises(ValueError, match="doc_texts or doc_token_ids is required"):
        make_request(eng, tiny_texts, ids, doc_texts=None)
    with pytest.raises(ValueError, match="same length"):
        make_request(eng, tiny_texts, ids, doc_tokens=[5])
    with pytest.raises(ValueError, match=r"doc_tokens\[1\]=7 .*count_tokens"):
        make_request(eng, tiny_texts, ids, doc_tokens=[eng.count_tokens(tiny_texts[ids[0]]), 7])
    with pytest.raises(ValueError, match=r"doc_token_ids\[0\] must hold token ids in \[0, "):
        make_request(eng, tiny_texts, ids, doc_texts=None, doc_token_ids=[[1, -2], [3]])
    with pytest.raises(ValueError, match="question_ids"):
        make_request(eng, tiny_texts, ids, question_ids=[10**9])
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng.generate(make_request(eng, tiny_texts, ids), 0)
    with pytest.raises(ValueError, match="no token ids"):
        from hyperrag.engines.base import Prompt

        eng.prefill(PrefillRequest(eng.namespace(), Prompt(("a",), (3,), ("n3",), 4)))


def test_token_ids_serve_exactly_the_callers_tokens(tiny_engine, tiny_texts):
    eng = tiny_engine
    ids = sorted(tiny_texts)[:2]
    by_text = make_request(eng, tiny_texts, ids, question="Where?")
    by_ids = make_request(eng, tiny_texts, ids, doc_texts=None, question="ignored",
                          doc_token_ids=[eng.document_ids(tiny_texts[d]) for d in ids],
                          question_ids=eng.question_ids("Where?"))
    assert by_ids.prompt == by_text.prompt
    np.testing.assert_array_equal(eng.prefill(by_ids).logits, eng.prefill(by_text).logits)


def test_top_logits_on_request(tiny_engine, tiny_texts):
    eng = tiny_engine
    ids = sorted(tiny_texts)[:1]
    request = make_request(eng, tiny_texts, ids)
    request.top_logits = 5
    r = eng.prefill(request)
    assert [t for t, _ in r.top_logits] == list(np.argsort(-r.logits, kind="stable")[:5])
    assert r.top_logits[0][0] == r.first_token_id
