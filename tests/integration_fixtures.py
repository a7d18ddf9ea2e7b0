"""Shared fixtures of the framework integration tests (imported by those modules)."""
from __future__ import annotations

import numpy as np
import pytest

from hyperrag import RAGOptimize, RAGOptimizeConfig

OUTPUT_TOKENS = 8
QUESTION = "Which document talks about the history of the region?"
FLOAT32_LOGIT_TOL = 1e-5  # exact reuse in float32 (as in test_exactness)


@pytest.fixture
def ctrl(tiny_engine):
    """A fresh cache per test, so the first query of a test is always a miss."""
    return RAGOptimize(RAGOptimizeConfig()).build_controller(engine=tiny_engine, default_output_tokens=OUTPUT_TOKENS)


@pytest.fixture
def served(ctrl, monkeypatch):
    """(prompt keys, question token ids, first-token logits) of every answer the engine generates.

    The tiny random model answers almost anything with the same tokens, so equal answer
    texts alone would not show that the same prompt was served; equal keys (document ids
    with content fingerprints) and question ids do."""
    calls = []
    generate = ctrl.engine.generate

    def spy(request, *args, **kwargs):
        out = generate(request, *args, **kwargs)
        calls.append((request.prompt.keys, request.prompt.question_ids, out.prefill.logits))
        return out

    monkeypatch.setattr(ctrl.engine, "generate", spy)
    return calls


def assert_same_prompt(call, reference, exact=False):
    assert call[:2] == reference[:2]
    if exact:  # both served from the same cached KV
        assert np.array_equal(call[2], reference[2])
    else:
        assert np.abs(call[2] - reference[2]).max() <= FLOAT32_LOGIT_TOL
