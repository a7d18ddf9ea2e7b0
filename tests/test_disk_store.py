"""Checksummed blobs and the directory store that several processes share."""
import numpy as np
import pytest

from hyperrag.cache import StorageError
from hyperrag.cache.blob import BlobError, decode, encode
from hyperrag.cache.disk_store import DiskKVStore, path_key


def test_blob_round_trip_and_every_damage_is_refused():
    payload = np.arange(1000, dtype=np.uint16).view(np.uint8)
    b = encode("ns/a#1", payload)
    np.testing.assert_array_equal(decode(b, "ns/a#1"), payload)
    flipped = bytearray(b)
    flipped[-7] ^= 1
    for damaged, key, message in ((b[:-1], "ns/a#1", "header says"), (bytes(flipped), "ns/a#1", "checksum"),
                                  (b, "ns/a#2", "another key"), (b"XXXX" + b[4:], "ns/a#1", "magic"),
                                  (b[:10], "ns/a#1", "shorter than its header")):
        with pytest.raises(BlobError, match=message):
            decode(damaged, key)
    assert issubclass(BlobError, StorageError)


def test_store_is_content_addressed_and_shared_between_instances(tmp_path):
    a, b = DiskKVStore(tmp_path), DiskKVStore(tmp_path)  # two processes' views of one directory
    payload = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
    assert a.put("m", ["sys#1", "d#2"], payload) and not a.put("m", ["sys#1", "d#2"], payload)
    assert b.contains("m", ["sys#1", "d#2"]) and not b.contains("m", ["d#2"])
    np.testing.assert_array_equal(b.get("m", ["sys#1", "d#2"]), payload)
    assert b.get("m", ["sys#1", "other"]) is None
    # The path is part of the identity: the same document after another prefix is another node.
    assert path_key("m", ["a", "b"]) != path_key("m", ["ab"]) != path_key("m", ["b", "a"])
    victim = next(tmp_path.rglob("*.kv"))
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(BlobError):
        b.get("m", ["sys#1", "d#2"])
    b.remove("m", ["sys#1", "d#2"])
    assert not a.contains("m", ["sys#1", "d#2"]) and not list(tmp_path.rglob("*.tmp"))
