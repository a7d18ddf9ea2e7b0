"""The token-level prefix cache baseline of bench/bench_real_ttft.py: it reuses the longest
cached token prefix, answers as a prefill from scratch does, and keeps to its capacity."""
import importlib.util
import sys
from pathlib import Path

import numpy as np

from hyperrag.engines.base import PrefillRequest
from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401

spec = importlib.util.spec_from_file_location("token_prefix_cache",
                                              Path(__file__).parents[1] / "bench" / "token_prefix_cache.py")
tpc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tpc  # dataclasses look their module up
spec.loader.exec_module(tpc)


def prompt_ids(engine, texts, ids, question):
    p = engine.prompt(ids, doc_texts=[texts[d] for d in ids], question=question)
    return [t for seg in p.token_ids for t in seg] + list(p.question_ids), p


def test_reuses_the_longest_token_prefix_and_answers_like_recomputing(tiny_engine, tiny_texts):
    eng = tiny_engine
    d = sorted(tiny_texts)
    cache = tpc.TokenPrefixCache(eng, capacity_bytes=1 << 30)
    cases = [(d[:3], "What?"), (d[:3], "What?"), (d[:3], "Why?"), ([d[0], d[4], d[5]], "Why?"), ([d[1], d[0]], "Who?")]
    system = len(eng.system_ids())
    first_doc = system + eng.count_tokens(tiny_texts[d[0]])
    # Token-level reuse also takes the template tokens a new segment shares ("Document: ").
    expected_cached = [(0, 0), None, None, (first_doc, first_doc + 8), (system, system + 8)]
    for (ids, question), want in zip(cases, expected_cached):
        tokens, prompt = prompt_ids(eng, tiny_texts, ids, question)
        r = cache.prefill(tokens)
        fresh = eng.prefill(PrefillRequest(eng.namespace(), prompt))
        np.testing.assert_allclose(r.logits, fresh.logits, atol=1e-5)
        assert r.first_token_id == fresh.first_token_id
        if want is not None:
            assert want[0] <= r.cached_tokens <= want[1], (ids, r.cached_tokens, want)
    # An exact repeat reuses everything but the last token; a new question after the same documents
    # reuses the documents.
    tokens, _ = prompt_ids(eng, tiny_texts, d[:3], "What?")
    assert cache.prefill(tokens).cached_tokens == len(tokens) - 1


def test_capacity_evicts_least_recently_used_leaves(tiny_engine, tiny_texts):
    eng = tiny_engine
    d = sorted(tiny_texts)
    first, _ = prompt_ids(eng, tiny_texts, d[:2], "What?")
    cache = tpc.TokenPrefixCache(eng, capacity_bytes=eng.kv_bytes(int(len(first) * 1.5)))
    for i in range(1, 5):  # four other prompts: the first one's documents must leave
        tokens, _ = prompt_ids(eng, tiny_texts, [d[2 * i % 10], d[(2 * i + 1) % 10]], f"Question {i}?")
        cache.prefill(tokens)
        assert cache.bytes <= cache.capacity
        assert cache.bytes == sum(eng.kv_bytes(len(e.tokens)) for e in cache._edges())
    tokens, _ = prompt_ids(eng, tiny_texts, d[:2], "What?")
    assert cache.prefill(tokens).cached_tokens <= len(eng.system_ids()) + 8  # the first prompt's documents left
