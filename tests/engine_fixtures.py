"""Shared fixtures of the engine, exactness and retrieval tests (imported by those modules)."""
from __future__ import annotations

from typing import Sequence

import pytest
import torch

from hyperrag.data import load_corpus
from hyperrag.engines.base import DocumentKV

# These tests run many small forward passes; on a 2-core machine shared with
# other jobs, OpenMP's second thread mostly waits at barriers (measured: a tiny
# model's 16-token generate took 0.9 s with 2 threads, 0.12 s with 1).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from hyperrag.engines.hf_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), num_layers=2, hidden_size=128, num_heads=2,
                           num_kv_heads=1, max_position_embeddings=2048)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from hyperrag.engines.transformers_engine import TransformersEngine

    return TransformersEngine(str(tiny_model_dir), dtype="float32")


@pytest.fixture(scope="session")
def tiny_texts():
    return {d.doc_id: d.text for d in load_corpus()[:12]}


@pytest.fixture(scope="session")
def smollm2_engine():
    from hyperrag.engines.transformers_engine import TransformersEngine

    return TransformersEngine("smollm2", dtype="bfloat16")


@pytest.fixture(scope="session")
def short_corpus_texts():
    """The 12 shortest corpus documents: keeps the real-model test CI-sized."""
    docs = sorted(load_corpus(), key=lambda d: len(d.text))[:12]
    return {d.doc_id: d.text for d in docs}


class PathKVStore:
    """An in-process dict of per-path segment KV, standing in for the cache so the
    engine is tested alone. Keys are (namespace, s0, ..., si): the KV of segment si
    (the system prompt, then documents) after the exact segments before it,
    mirroring a tree node. Unbounded, no eviction."""
    def __init__(self):
        self._nodes: dict = {}

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nbytes(self) -> int:
        return sum(kv.nbytes for kv in self._nodes.values())

    def match(self, namespace: str, doc_ids: Sequence[str]) -> list:
        """DocumentKV of the longest cached prefix of doc_ids, in order."""
        found = []
        for i in range(len(doc_ids)):
            kv = self._nodes.get((namespace, *doc_ids[: i + 1]))
            if kv is None:
                break
            found.append(kv)
        return found

    def insert(self, namespace: str, doc_ids: Sequence[str], new_kv: Sequence[DocumentKV]) -> None:
        """Store new_kv as the nodes for doc_ids[len(doc_ids) - len(new_kv):]."""
        start = len(doc_ids) - len(new_kv)
        for i, kv in enumerate(new_kv, start):
            if kv.doc_id != doc_ids[i]:
                raise ValueError(f"new_kv[{i - start}].doc_id is {kv.doc_id!r} but doc_ids[{i}] is {doc_ids[i]!r}")
            self._nodes[(namespace, *doc_ids[: i + 1])] = kv
