"""HyperRAGConnector's vLLM stats: the store's counters as deltas per interval, reported once
per process (worker side), summed across workers by vLLM."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: scripts/install_vllm.sh makes .venv-vllm")

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402

from hyperrag.integrations.vllm import connector_config  # noqa: E402
from hyperrag.integrations.vllm.connector import HyperRAGConnector, HyperRAGConnectorStats  # noqa: E402


def make(role, capacities):
    config = SimpleNamespace(kv_transfer_config=connector_config(capacities), cache_config=SimpleNamespace(block_size=16))
    return HyperRAGConnector(config, role, None)


def test_stats_are_interval_deltas_from_the_worker_side_only():
    capacities = {"host": (1 << 20) + 12345}  # a store of its own (stores are shared per configuration)
    worker, scheduler = make(KVConnectorRole.WORKER, capacities), make(KVConnectorRole.SCHEDULER, capacities)
    assert worker.store is scheduler.store
    assert worker.get_kv_connector_stats() is None  # nothing happened yet
    keys, tokens = ["sys#1", "d1#a"], [4, 6]
    store = worker.store
    store.save("m", keys, tokens, {0: np.zeros(400, np.uint8), 1: np.ones(600, np.uint8)})
    store.acquire("r1", "m", keys, tokens)
    store.release("r1")
    first = worker.get_kv_connector_stats()
    assert first.data["saved_segments"] == 2 and first.data["saved_bytes"] == 1000
    assert first.data["hit_segments"] == 2 and first.data["hit_tokens"] == 10 and first.data["hit_segments_host"] == 2
    assert scheduler.get_kv_connector_stats() is None  # the same store: reporting it twice would double count
    assert worker.get_kv_connector_stats() is None     # no change since the last interval
    store.acquire("r2", "m", keys[:1], tokens[:1])
    second = worker.get_kv_connector_stats()
    assert second.data["hit_segments"] == 1 and second.data["saved_segments"] == 0

    summed = HyperRAGConnector.build_kv_connector_stats(first.to_dict()).aggregate(second)
    assert isinstance(summed, HyperRAGConnectorStats)
    assert summed.reduce()["hit_segments"] == 3 and summed.reduce()["saved_bytes"] == 1000
    summed.reset()
    assert summed.is_empty()
