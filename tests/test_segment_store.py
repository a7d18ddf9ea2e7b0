"""SegmentStore: held paths, saves that never store bytes they lack, and a disk shared by processes."""
import numpy as np

from hyperrag.cache.segment_store import SegmentStore, shared_store


def payload(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_save_acquire_release_and_disk_sharing(tmp_path):
    a = SegmentStore({"host": 1 << 20}, directory=tmp_path)
    keys, tokens = ["sys#1", "d1#a", "d2#b"], [3, 5, 7]
    p = {0: payload(300, 0), 1: payload(500, 1), 2: payload(700, 2)}
    assert a.save("m", keys, tokens, p) == 3
    assert a.cached_prefix("m", keys) == 3 and a.cached_prefix("m", ["sys#1", "d2#b"]) == 1
    held = a.acquire("r1", "m", keys[:2], tokens[:2])
    assert len(held) == 2 and all(a.cache.node(n).lock_count == 1 for n in held)
    np.testing.assert_array_equal(a.read(held[1]), p[1])
    a.release("r1")
    a.release("r1")  # idempotent
    assert all(a.cache.node(n).lock_count == 0 for n in held)
    assert a.stats().hit_segments == 2 and a.stats().saved_segments == 3

    b = SegmentStore({"host": 1 << 20}, directory=tmp_path)  # another process: memory empty, disk shared
    assert b.cache.stats().num_nodes == 0 and b.cached_prefix("m", keys) == 3
    held = b.acquire("r2", "m", keys, tokens)
    assert len(held) == 3 and b.stats().disk_hits == 3
    for n, j in zip(held, range(3)):
        np.testing.assert_array_equal(b.read(n), p[j])
    b.release("r2")
    assert b.cache.tree.check_invariants() == []


def test_a_save_whose_prefix_is_missing_stores_nothing(tmp_path):
    s = SegmentStore({"host": 1 << 20})
    assert s.save("m", ["sys#1", "d1#a"], [3, 5], {1: payload(500, 1)}) == 0  # no bytes for sys#1
    assert s.cache.stats().num_nodes == 0 and s.stats().failures == 1
    assert s.save("m", ["sys#1"], [3], {0: payload(300, 0)}) == 1
    assert s.save("m", ["sys#1", "d1#a"], [3, 5], {1: payload(500, 1)}) == 1  # now the prefix is cached


def test_corrupted_disk_blob_is_a_miss_and_counted(tmp_path):
    a = SegmentStore({"host": 1 << 20}, directory=tmp_path)
    a.save("m", ["sys#1", "d1#a"], [3, 5], {0: payload(300, 0), 1: payload(500, 1)})
    files = sorted(tmp_path.rglob("*.kv"), key=lambda f: f.stat().st_size)
    files[-1].write_bytes(files[-1].read_bytes()[:-1])  # the 500-byte node's file
    b = SegmentStore({"host": 1 << 20}, directory=tmp_path)
    held = b.acquire("r", "m", ["sys#1", "d1#a"], [3, 5])
    assert len(held) == 1 and b.stats().failures == 1  # the damaged node is not taken
    b.release("r")


def test_shared_store_is_one_per_configuration(tmp_path):
    assert shared_store({"host": 1 << 20}, str(tmp_path)) is shared_store({"host": 1 << 20}, str(tmp_path))
    assert shared_store({"host": 1 << 20}) is not shared_store({"host": 2 << 20})
