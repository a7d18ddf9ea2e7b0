"""BlockPool and TransferEngine through the Python bindings."""
import threading

import numpy as np
import pytest
import torch

from hyperrag.cache.storage import (
    BlockPool,
    DevicePool,
    KVCache,
    PoolExhaustedError,
    TransferEngine,
    cuda_compiled,
    cuda_device_count,
)


def pattern(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)


# --- BlockPool -------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_bytes=0, num_blocks=4), "block_bytes"),
        (dict(block_bytes=-64, num_blocks=4), "block_bytes"),
        (dict(block_bytes=64, num_blocks=0), "num_blocks"),
        (dict(block_bytes=1 << 40, num_blocks=1 << 40), "overflows"),
    ],
)
def test_pool_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockPool(**kwargs)


def test_pool_pinning_follows_the_device():
    assert BlockPool(64, 2).pinned == (cuda_device_count() > 0)
    assert not BlockPool(64, 2, pinned=False).pinned
    with pytest.raises(TypeError, match="pinned"):
        BlockPool(64, 2, pinned="yes")
    if cuda_device_count() == 0:
        with pytest.raises(RuntimeError, match="CUDA device"):
            BlockPool(64, 2, pinned=True)


def test_pool_allocate_free_accounting():
    pool = BlockPool(128, 8)
    a = pool.allocate(3)
    assert a == [0, 1, 2]
    assert (pool.used_blocks, pool.free_blocks, pool.used_bytes) == (3, 5, 3 * 128)
    b = pool.allocate(5)
    with pytest.raises(PoolExhaustedError, match="only 0 of 8"):
        pool.allocate(1)
    assert issubclass(PoolExhaustedError, MemoryError)
    pool.free(a)
    assert pool.used_blocks == 5 and not pool.is_allocated(a[0]) and pool.is_allocated(b[0])
    with pytest.raises(ValueError, match="not allocated"):
        pool.free(a)  # double free
    with pytest.raises(ValueError, match="twice"):
        pool.free([b[0], b[0]])
    with pytest.raises(ValueError, match="out of range"):
        pool.free([8])
    with pytest.raises(ValueError, match="n must be >= 0"):
        pool.allocate(-1)
    assert pool.used_blocks == 5  # failed calls changed nothing
    assert pool.blocks_for(129) == 2 and pool.blocks_for(0) == 0


def test_pool_numpy_round_trip_and_zero_copy_view():
    pool = BlockPool(100, 10)
    ids = pool.allocate(4)
    ids[0], ids[3] = ids[3], ids[0]  # order of ids defines the layout, not id values
    src = pattern(345, 1)
    pool.write(ids, src)
    out = np.zeros(345, dtype=np.uint8)
    pool.read(ids, out)
    np.testing.assert_array_equal(out, src)
    view = pool.view(ids[1])
    assert view.shape == (100,) and view.dtype == np.uint8
    np.testing.assert_array_equal(view, src[100:200])
    view[:] = 7  # writes land in the pool itself
    pool.read(ids, out)
    assert (out[100:200] == 7).all()
    # Other dtypes are stored as their raw bytes.
    f = np.linspace(0, 1, 40, dtype=np.float32)  # 160 bytes -> 2 blocks
    two = pool.allocate(2)
    pool.write(two, f)
    g = np.empty_like(f)
    pool.read(two, g)
    np.testing.assert_array_equal(f, g)


def test_pool_view_keeps_pool_alive():
    pool = BlockPool(64, 2)
    (i,) = pool.allocate(1)
    view = pool.view(i)
    view[:] = 3
    del pool
    assert (view == 3).all()  # memory still owned through the view's base


def test_pool_torch_round_trip():
    pool = BlockPool(256, 16)
    t = torch.randn(3, 50, dtype=torch.float16)  # 300 bytes -> 2 blocks
    ids = pool.allocate(2)
    pool.write(ids, t)
    back = torch.empty_like(t)
    pool.read(ids, back)
    assert torch.equal(back, t)
    # bytes/bytearray/memoryview work too.
    pool.write(ids[:1], b"x" * 200)
    buf = bytearray(200)
    pool.read(ids[:1], buf)
    assert bytes(buf) == b"x" * 200


def test_pool_rejects_bad_buffers():
    pool = BlockPool(64, 8)
    ids = pool.allocate(2)
    with pytest.raises(ValueError, match="needs 3 blocks"):
        pool.write(ids, np.zeros(129, np.uint8))  # too large
    with pytest.raises(ValueError, match="needs 1 blocks"):
        pool.write(ids, np.zeros(64, np.uint8))  # too small
    with pytest.raises(ValueError, match="contiguous"):
        pool.write(ids, np.zeros((16, 16), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="contiguous"):
        pool.write(ids, torch.zeros(16, 16, dtype=torch.uint8).t()[:, :8])
    ro = np.zeros(128, np.uint8)
    ro.flags.writeable = False
    pool.write(ids, ro)  # reading from a read-only array is fine
    with pytest.raises(ValueError, match="read-only"):
        pool.read(ids, ro)
    with pytest.raises(ValueError, match="read-only"):
        pool.read(ids, b"\0" * 128)
    with pytest.raises(TypeError, match="buffer must be"):
        pool.write(ids, [1, 2, 3])
    with pytest.raises(ValueError, match="block 5 is not allocated"):
        pool.write([ids[0], 5], np.zeros(128, np.uint8))
    with pytest.raises(ValueError, match="not allocated"):
        pool.view(7)
    with pytest.raises(ValueError, match="out of range"):
        pool.address(-1)


def test_pool_concurrent_writers():
    pool = BlockPool(4096, 64)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for r in range(50):
            n = int(rng.integers(1, 5))
            try:
                ids = pool.allocate(n)
            except PoolExhaustedError:
                continue
            data = rng.integers(0, 256, size=n * 4096 - 3, dtype=np.uint8)
            pool.write(ids, data)
            out = np.empty_like(data)
            pool.read(ids, out)
            if not np.array_equal(out, data):
                errors.append((seed, r))
            pool.free(ids)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and pool.used_blocks == 0


# --- TransferEngine ----------------------------------------------------------------

def test_engine_backend_choice():
    eng = TransferEngine()
    assert eng.backend == ("cuda" if cuda_device_count() > 0 else "cpu")
    assert eng.threads == 2
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'cpu', 'cuda'"):
        TransferEngine(backend="tpu")
    with pytest.raises(ValueError, match="threads"):
        TransferEngine(threads=0)
    if cuda_device_count() == 0:
        expected = "no CUDA device" if cuda_compiled() else "no CUDA backend"
        with pytest.raises(RuntimeError, match=expected):
            TransferEngine(backend="cuda")


@pytest.mark.skipif(not cuda_compiled(), reason="module built without nvcc: no CUDA backend to fall back from")
@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is present: nothing falls back")
def test_cuda_build_without_device_runs_on_cpu():
    # The CUDA backend is linked in, yet with no driver/device everything picks the CPU path.
    eng = TransferEngine(backend="auto")
    pool = BlockPool(1 << 20, 4)
    assert eng.backend == "cpu" and not pool.pinned
    ids = pool.allocate(4)
    src = pattern(4 << 20, 11)
    dst = np.zeros_like(src)
    pool.write(ids, src)
    eng.wait(eng.submit([(dst[k << 20:], pool.address(i), 1 << 20) for k, i in enumerate(ids)]))
    np.testing.assert_array_equal(dst, src)


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is present: the gpu tier is device memory")
def test_without_a_device_the_gpu_tier_is_host_memory():
    with pytest.raises(RuntimeError, match="DevicePool needs a CUDA device"):
        DevicePool(64 << 10, 4, 2)
    cache = KVCache({"gpu": 1 << 20, "host": 4 << 20}, policy="lru")
    assert cache.gpu_on_device is False
    cache.put("ns", ["a"], [8], [100 << 10])
    node = cache.match("ns", ["a"]).node_ids[0]
    stats = cache.storage_stats()
    assert stats["gpu"]["device"] is False and stats["gpu"]["blocks_used"] == 2
    assert bytes(cache.get(node)) == bytes(cache.get(node))  # readable host bytes
    with pytest.raises(RuntimeError, match="gpu_device=True: no CUDA device is available"):
        KVCache({"gpu": 1 << 20}, policy="lru", gpu_device=True)
    with pytest.raises(RuntimeError, match="gpu_device=True: there is no gpu tier"):
        KVCache({"host": 1 << 20}, policy="lru", gpu_device=True)
    with pytest.raises(TypeError, match="gpu_device must be None"):
        KVCache({"gpu": 1 << 20}, policy="lru", gpu_device="yes")


def test_engine_stream_argument():
    eng = TransferEngine(backend="cpu")
    src = pattern(100, 1)
    dst = np.zeros_like(src)
    with pytest.raises(ValueError, match="only the cuda backend orders copies after a CUDA stream"):
        eng.submit([(dst, src, 100)], stream=0)
    with pytest.raises(ValueError, match="stream must be a CUDA stream handle >= 0"):
        eng.submit([(dst, src, 100)], stream=-1)
    with pytest.raises(TypeError, match="stream"):
        eng.submit([(dst, src, 100)], stream="s")
    eng.wait(eng.submit([(dst, src, 100)], stream=None))
    np.testing.assert_array_equal(dst, src)
    assert eng.stats().failed == 0


@pytest.mark.parametrize("n", [0, 1, 4097, 64 << 10, (64 << 10) + 1, (3 << 20) + 5])
def test_engine_copies_numpy_exactly(n):
    eng = TransferEngine(threads=2, backend="cpu")
    src = pattern(n, n)
    dst = np.zeros(n, np.uint8)
    t = eng.submit([(dst, src, n)])
    eng.wait(t)
    assert eng.poll(t)
    np.testing.assert_array_equal(dst, src)


def test_engine_torch_and_addresses():
    eng = TransferEngine(backend="cpu")
    src = torch.arange(1 << 18, dtype=torch.int32)  # 1 MiB
    dst = torch.zeros_like(src)
    eng.wait(eng.submit([(dst, src, src.numel() * 4)]))
    assert torch.equal(dst, src)
    # Raw addresses, e.g. pool blocks; a partial copy leaves the rest untouched.
    pool = BlockPool(1024, 4)
    a, b = pool.allocate(2)
    pool.view(a)[:] = pattern(1024, 3)
    pool.view(b)[:] = 0
    eng.wait(eng.submit([(pool.address(b), pool.address(a), 1000)]))
    np.testing.assert_array_equal(pool.view(b)[:1000], pool.view(a)[:1000])
    assert (pool.view(b)[1000:] == 0).all()


def test_engine_rejects_bad_copies():
    eng = TransferEngine(backend="cpu")
    a, b = np.zeros(100, np.uint8), np.zeros(50, np.uint8)
    with pytest.raises(ValueError, match=r"copies\[0\].dst holds 50 bytes, fewer than nbytes=100"):
        eng.submit([(b, a, 100)])
    with pytest.raises(ValueError, match=r"copies\[1\].nbytes must be >= 0"):
        eng.submit([(a, b, 10), (a, b, -1)])
    with pytest.raises(ValueError, match=r"copies\[0\] must be a \(dst, src, nbytes\) tuple"):
        eng.submit([(a, b)])
    with pytest.raises(ValueError, match="read-only"):
        eng.submit([(b"\0" * 100, a, 10)])
    with pytest.raises(ValueError, match="address must be a positive integer"):
        eng.submit([(0, a, 10)])
    with pytest.raises(ValueError, match="overlap"):
        eng.submit([(a[10:], a, 50)])
    with pytest.raises(ValueError, match="not issued"):
        eng.poll(1)  # every submit above failed: no ticket exists
    with pytest.raises(ValueError, match="not issued"):
        eng.wait(0)


def test_engine_ticket_semantics_and_stats():
    eng = TransferEngine(backend="cpu")
    src = pattern(8 << 20, 5)
    dst = np.zeros_like(src)
    t1 = eng.submit([(dst, src, src.nbytes)])
    t2 = eng.submit([])
    assert (t1, t2) == (1, 2)
    while not eng.poll(t1):  # completes without any wait()
        pass
    eng.wait(t1)  # a completed ticket stays complete
    assert eng.poll(t2)
    np.testing.assert_array_equal(dst, src)
    s = eng.stats()
    assert (s.bytes, s.copies, s.batches, s.pending) == (8 << 20, 1, 2, 0)
    assert s.busy_seconds > 0 and s.gbps == pytest.approx(s.bytes / s.busy_seconds / 1e9)


def test_engine_keeps_sources_alive_until_complete():
    eng = TransferEngine(backend="cpu")
    dst = np.zeros(16 << 20, np.uint8)
    t = eng.submit([(dst, np.full(16 << 20, 9, np.uint8), 16 << 20)])  # the source has no other reference
    eng.wait(t)
    assert (dst == 9).all()


def test_engine_concurrent_submitters():
    eng = TransferEngine(backend="cpu")
    errors, total = [], []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for r in range(20):
            sizes = rng.integers(1, 300_000, size=int(rng.integers(1, 6)))
            srcs = [rng.integers(0, 256, size=int(n), dtype=np.uint8) for n in sizes]
            dsts = [np.zeros_like(s) for s in srcs]
            t = eng.submit([(d, s, s.nbytes) for d, s in zip(dsts, srcs)])
            if r % 2:
                eng.wait(t)
            else:
                while not eng.poll(t):
                    pass
            if not all(np.array_equal(d, s) for d, s in zip(dsts, srcs)):
                errors.append((seed, r))
            total.append(int(sizes.sum()))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = eng.stats()
    assert s.bytes == sum(total) and s.pending == 0 and s.batches == 6 * 20
