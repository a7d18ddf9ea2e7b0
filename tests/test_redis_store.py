"""RedisKVStore against a real redis-server: round trips, chunks, damaged values, faults, bounds."""
import subprocess
import sys
import time

import numpy as np
import pytest

from hyperrag.cache.blob import BlobError
from hyperrag.cache.kv_cache import StorageError
from hyperrag.cache.redis_store import RedisKVStore, RemoteError
from redis_server import redis_server  # noqa: F401

PATH = ("model-ns", ["<system>#00ff", "doc-1#abcd"])


def payload(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_round_trip_and_keys_are_the_same_in_another_process(redis_server):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="through")
    data = payload(10_000)
    assert store.put(*PATH, data)
    assert np.array_equal(store.get(*PATH), data)
    assert store.contains(*PATH) and not store.contains("model-ns", ["other"])
    assert store.get("model-ns", ["other"]) is None
    code = ("from hyperrag.cache.redis_store import RedisKVStore as R;"
            f"print(R({redis_server.url!r}, write='through').key({PATH[0]!r}, {PATH[1]!r}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == store.key(*PATH)  # no salted hash(): every process finds the same value
    s = store.stats()
    assert (s.puts, s.hits, s.gets, s.errors) == (1, 1, 2, 0)


def test_large_values_are_chunked_and_a_missing_chunk_is_a_refusal(redis_server):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="through", chunk_bytes=4096)
    data = payload(20_000)
    store.put(*PATH, data)
    client = redis_server.client()
    key = store.key(*PATH)
    assert client.get(key).startswith(b"HRCHUNKS") and client.exists(f"{key}:4")
    assert np.array_equal(store.get(*PATH), data)
    client.delete(f"{key}:2")  # as if Redis evicted one chunk
    with pytest.raises(BlobError, match="chunk"):
        store.get(*PATH)
    assert store.stats().corrupt == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_damaged_values_are_refused_never_served(redis_server, damage):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="through")
    store.put(*PATH, payload(5000))
    client, key = redis_server.client(), store.key(*PATH)
    value = client.get(key)
    if damage == "flip":
        client.setrange(key, len(value) - 100, bytes([value[-100] ^ 0xFF]))
    elif damage == "truncate":
        client.set(key, value[:-10])
    else:  # another node's intact blob under this key
        store.put("model-ns", ["x"], payload(5000, 1))
        client.set(key, client.get(store.key("model-ns", ["x"])))
    with pytest.raises(BlobError):
        store.get(*PATH)
    assert store.stats().corrupt == 1 and store.stats().hits == 0


def test_dead_server_costs_one_timeout_then_backs_off_and_recovers(redis_server):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="through", timeout_s=0.2, max_backoff_s=0.5)
    store.put(*PATH, payload(1000))
    redis_server.kill()
    start = time.monotonic()
    with pytest.raises(RemoteError):
        store.get(*PATH)
    for _ in range(20):  # while backing off, calls are refused at once
        with pytest.raises(StorageError):
            store.get(*PATH)
    assert time.monotonic() - start < 1.0
    s = store.stats()
    assert s.errors >= 1 and s.skipped >= 1
    redis_server.start()
    time.sleep(0.6)  # past the back-off
    assert store.get(*PATH) is None  # reconnected; the data died with the server (no persistence)
    assert store.put(*PATH, payload(1000)) and store.get(*PATH) is not None


def test_slow_server_times_out_within_the_timeout(redis_server):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="through", timeout_s=0.2)
    store.put(*PATH, payload(1000))
    sleeper = subprocess.Popen(["redis-cli", "-p", str(redis_server.port), "DEBUG", "SLEEP", "1"])
    time.sleep(0.1)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="redis at"):
        store.get(*PATH)
    assert time.monotonic() - start < 0.6
    sleeper.wait(timeout=5)


def test_write_back_never_blocks_and_its_queue_is_bounded(redis_server):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="back", queue_size=2, timeout_s=2.0)
    sleeper = subprocess.Popen(["redis-cli", "-p", str(redis_server.port), "DEBUG", "SLEEP", "1"])
    time.sleep(0.1)
    start = time.monotonic()
    for i in range(10):
        store.put("model-ns", [f"d{i}"], payload(1000, i))
    assert time.monotonic() - start < 0.2  # the serving path never waits for Redis
    assert store.queued <= 2 and store.stats().dropped_writes >= 7
    sleeper.wait(timeout=5)
    assert store.flush(5.0)
    stored = [i for i in range(10) if store.get("model-ns", [f"d{i}"]) is not None]
    assert 1 <= len(stored) <= 3  # what the bounded queue held (plus the write in flight)


@pytest.mark.parametrize("kwargs,message", [
    ({"url": "localhost:6379"}, "url must be a redis URL"),
    ({"timeout_s": 0}, "timeout_s must be"),
    ({"chunk_bytes": 0}, "chunk_bytes must be an int >= 1"),
    ({"write": "around"}, "write must be one of"),
    ({"queue_size": -1}, "queue_size must be an int >= 1"),
])
def test_bad_configuration_names_the_field(kwargs, message):
    pytest.importorskip("redis")
    with pytest.raises(ValueError, match=message):
        RedisKVStore(**kwargs)


def test_get_many_answers_a_whole_path_in_one_call(redis_server):  # noqa: F811
    store = RedisKVStore(redis_server.url, write="back", chunk_bytes=4096)
    paths = [["s"], ["s", "a"], ["s", "a", "b"], ["s", "a", "b", "c"]]
    for i, path in enumerate(paths[:3]):
        store.put("ns", path, payload(6000 if i == 1 else 500, i))  # the middle one is chunked
    assert store.flush(5.0) and store.stats().puts == 3
    redis_server.client().set(store.key("ns", paths[2]), b"garbage")
    entries = store.get_many("ns", paths)
    assert np.array_equal(entries[0], payload(500, 0)) and np.array_equal(entries[1], payload(6000, 1))
    assert isinstance(entries[2], BlobError) and entries[3] is None
    s = store.stats()
    assert (s.gets, s.hits, s.corrupt) == (4, 2, 1)
