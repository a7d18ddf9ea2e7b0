"""The shared remote tier on Redis: processes reuse each other's KV, faults never give wrong answers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import tiny_model_dir  # noqa: F401
from redis_server import redis_server  # noqa: F401

SERVE = Path(__file__).resolve().parent / "remote_serve.py"
QUERIES = 16


def serve(model_dir, url, n=QUERIES) -> dict:
    out = subprocess.run([sys.executable, str(SERVE), str(model_dir), url, str(n)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def recomputed(tiny_model_dir):  # noqa: F811
    return serve(tiny_model_dir, "none")["answers"]


def test_second_process_reuses_the_first_ones_kv_and_answers_the_same(tiny_model_dir, redis_server, recomputed):  # noqa: F811
    first = serve(tiny_model_dir, redis_server.url)
    assert first["remote_hits"] == 0 and first["remote_stats"]["puts"] > 0
    second = serve(tiny_model_dir, redis_server.url)
    assert second["remote_hits"] >= QUERIES  # every path the first process computed is there
    assert second["remote_errors"] == 0
    assert first["answers"] == recomputed
    assert second["answers"] == recomputed


def controller(model_dir, remote=None, **kwargs):
    from hyperrag import RAGOptimize, RAGOptimizeConfig

    extra = {"remote": remote} if remote is not None else {"use_cache": False}
    return RAGOptimize(RAGOptimizeConfig()).build_controller(
        engine="transformers", model_path=str(model_dir), engine_kwargs={"dtype": "float32"},
        default_output_tokens=6, speculative=False, **extra, **kwargs)


def answers(ctrl, queries):
    return [ctrl.process(q).output_token_ids for q in queries]


def store(url, **kwargs):
    from hyperrag.cache.redis_store import RedisKVStore

    return RedisKVStore(url, **{"write": "through", "timeout_s": 0.3, "max_backoff_s": 0.3, **kwargs})


def test_faults_never_change_answers_and_hits_resume_after_restart(tiny_model_dir, redis_server, recomputed):  # noqa: F811
    import time

    from remote_workload import queries

    qs = queries(QUERIES)
    assert answers(controller(tiny_model_dir, store(redis_server.url)), qs) == recomputed

    # Damaged values written straight into Redis: every third flipped, every third truncated.
    client = redis_server.client()
    keys = sorted(client.keys("hyperrag:kv:*"))
    for i, key in enumerate(keys):
        value = client.get(key)
        if i % 3 == 0:
            client.setrange(key, len(value) - 1, bytes([value[-1] ^ 0x5A]))
        elif i % 3 == 1:
            client.set(key, value[: len(value) // 2])
    damaged = controller(tiny_model_dir, store(redis_server.url))
    assert answers(damaged, qs) == recomputed
    m = damaged.metrics()
    assert m.remote_errors >= 2 and m.remote_hits >= 1  # refused values counted, intact ones used

    # Added latency: a server that stalls past the timeout costs a recompute, not a wrong answer or a hang.
    slow_store = store(redis_server.url)
    slow = controller(tiny_model_dir, slow_store)
    client.flushall()
    sleeper = subprocess.Popen(["redis-cli", "-p", str(redis_server.port), "DEBUG", "SLEEP", "1.5"])
    time.sleep(0.1)
    start = time.monotonic()
    assert answers(slow, qs[:4]) == recomputed[:4]
    assert time.monotonic() - start < 30 and slow.metrics().remote_errors >= 1
    sleeper.wait(timeout=10)

    # SIGKILL mid-run, then restart: queries keep completing correctly; new KV is shared again.
    live_store = store(redis_server.url)
    live = controller(tiny_model_dir, live_store)
    assert answers(live, qs[:5]) == recomputed[:5]
    redis_server.kill()
    assert answers(live, qs[5:10]) == recomputed[5:10]
    errors_while_down = live_store.stats().errors + live_store.stats().skipped
    assert errors_while_down >= 1
    redis_server.start()
    time.sleep(0.4)  # past the back-off
    assert answers(live, qs[10:]) == recomputed[10:]
    assert live_store.stats().puts > 0
    reader = controller(tiny_model_dir, store(redis_server.url))
    assert answers(reader, qs[10:]) == recomputed[10:]
    assert reader.metrics().remote_hits >= 1  # hits resume for what was stored after the restart


def test_metrics_endpoint_agrees_with_the_controller(tiny_model_dir, redis_server):  # noqa: F811
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from hyperrag.serve.prometheus import serve_metrics
    from remote_workload import queries

    writer = controller(tiny_model_dir, store(redis_server.url))
    answers(writer, queries(6))
    ctrl = controller(tiny_model_dir, store(redis_server.url))
    answers(ctrl, queries(8))  # 6 paths from the shared tier, 2 computed; then repeats from memory
    answers(ctrl, queries(8))
    server = serve_metrics(ctrl, port=0)
    try:
        text = urllib.request.urlopen(server.url, timeout=10).read().decode()
    finally:
        server.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    m = ctrl.metrics()
    assert samples[("hyperrag_queries_total", ())] == m.queries == 16
    assert samples[("hyperrag_tier_hits_total", (("tier", "remote"),))] == m.remote_hits >= 6
    for tier, n in m.tier_hits.items():
        assert samples[("hyperrag_tier_hits_total", (("tier", tier),))] == n
    assert samples[("hyperrag_remote_hit_bytes_total", ())] == m.remote_hit_bytes > 0
    assert samples[("hyperrag_remote_errors_total", ())] == m.remote_errors == 0
    assert samples[("hyperrag_ttft_seconds_count", ())] == m.queries
    assert samples[("hyperrag_ttft_seconds_sum", ())] == pytest.approx(m.ttft_sum_s)
    assert samples[("hyperrag_ttft_seconds_bucket", (("le", "+Inf"),))] == m.queries
    assert samples[("hyperrag_remote_store_total", (("counter", "hits"),))] == m.remote_hits
    assert samples[("hyperrag_tier_used_bytes", (("tier", "host"),))] == m.host_used_mib * (1 << 20)


@pytest.mark.parametrize("kwargs,message", [
    ({"remote": object()}, "remote must be a shared KV store"),
    ({"metrics_port": -1}, r"metrics_port must be an int in \[0, 65535\]"),
    ({"metrics_port": "9400"}, "metrics_port must be an int"),
])
def test_bad_remote_options_name_the_field(kwargs, message):
    from hyperrag import RAGOptimize, RAGOptimizeConfig

    with pytest.raises(ValueError, match=message):
        RAGOptimize(RAGOptimizeConfig()).build_controller(**kwargs)


def test_the_simulated_engine_refuses_a_remote_tier(tmp_path):
    from hyperrag import RAGOptimize, RAGOptimizeConfig
    from hyperrag.cache.disk_store import DiskKVStore

    with pytest.raises(ValueError, match="real KV payloads"):
        RAGOptimize(RAGOptimizeConfig()).build_controller(remote=DiskKVStore(tmp_path))


def test_metrics_port_serves_the_controller(tiny_model_dir):  # noqa: F811
    import urllib.request

    from hyperrag import RAGOptimize, RAGOptimizeConfig
    from remote_workload import queries

    ctrl = RAGOptimize(RAGOptimizeConfig()).build_controller(
        engine="transformers", model_path=str(tiny_model_dir), engine_kwargs={"dtype": "float32"},
        default_output_tokens=2, metrics_port=0)
    try:
        answers(ctrl, queries(3))
        text = urllib.request.urlopen(ctrl.metrics_server.url, timeout=10).read().decode()
    finally:
        ctrl.metrics_server.close()
    assert "hyperrag_queries_total 3.0" in text and "hyperrag_remote_store" not in text
