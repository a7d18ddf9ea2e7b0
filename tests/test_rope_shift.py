"""Shifting cached keys between positions (hyperrag.engines.rope_shift) is exact."""
import pytest
import torch

from engine_fixtures import tiny_model_dir  # noqa: F401
from hyperrag.data import load_corpus
from hyperrag.engines.hf_models import cache_argument, dynamic_cache, load_causal_lm
from hyperrag.engines.rope_shift import shift_keys


def kv_at(model, ids, offset):
    """[layers, 2, heads, tokens, dim] of ``ids`` alone, positions offset .. offset + len - 1."""
    cache = dynamic_cache(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), position_ids=torch.arange(offset, offset + len(ids))[None],
              use_cache=True, **{cache_argument(model): cache})
    return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])


@pytest.fixture(scope="module")
def model_and_ids(tiny_model_dir):  # noqa: F811
    model, tokenizer = load_causal_lm(tiny_model_dir, dtype="float32")
    ids = tokenizer(load_corpus()[0].text, add_special_tokens=False)["input_ids"][:200]
    return model, ids


@pytest.mark.parametrize("a,b", [(0, 37), (37, 0), (15, 1500), (900, 1)])
def test_shifted_keys_equal_keys_computed_there(model_and_ids, a, b):
    model, ids = model_and_ids
    at_a, at_b = kv_at(model, ids, a), kv_at(model, ids, b)
    moved = shift_keys(model, at_a, a, b)
    assert not torch.allclose(at_a[:, 0], at_b[:, 0], atol=1e-3)  # the positions really differ
    torch.testing.assert_close(moved[:, 0], at_b[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[:, 1], at_b[:, 1], atol=1e-5, rtol=0)  # values: no position in them
    assert torch.equal(moved[:, 1], at_a[:, 1])


def test_bad_shift_and_unsupported_models_are_refused(model_and_ids):
    model, ids = model_and_ids
    kv = kv_at(model, ids[:8], 0)
    with pytest.raises(ValueError, match="to_offset must be an int >= 0"):
        shift_keys(model, kv, 0, 1.5)
    with pytest.raises(ValueError, match="from_offset must be an int >= 0"):
        shift_keys(model, kv, -1, 3)
    model.config.model_type = "gpt2"
    try:
        with pytest.raises(NotImplementedError, match="'gpt2'"):
            shift_keys(model, kv, 0, 3)
    finally:
        model.config.model_type = "llama"
