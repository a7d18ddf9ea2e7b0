"""The GPU half of scripts/gpu_check.sh: the device pool, the CUDA transfer engine
against torch's cudaMemcpyAsync copies, and a real model's reuse on the GPU.

Prints one summary table; exits 1 if a check fails, 2 without a CUDA device.
Not part of the test suite: it needs a GPU and runs only from gpu_check.sh.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

MIN_BANDWIDTH_RATIO = 0.8   # engine vs torch (cudaMemcpyAsync) for copies >= 1 MiB
MIN_REUSE_QUERIES = 20
GPU_LOGIT_TOL = 1e-4        # float32 on the GPU: GEMM kernels differ by row count
SIZES_MIB = (1, 4, 16, 64)

rows: list[tuple[str, str, bool]] = []  # (check, result, passed)


def record(check: str, result: str, passed: bool) -> None:
    rows.append((check, result, passed))
    print(f"[{'PASS' if passed else 'FAIL'}] {check}: {result}", flush=True)


def require_device():
    import torch
    from hyperrag.cache import cuda_compiled, cuda_device_count

    if not torch.cuda.is_available() or cuda_device_count() == 0:
        why = ("torch sees no CUDA device" if not torch.cuda.is_available() else
               "hyperrag was built without CUDA" if not cuda_compiled() else "hyperrag sees no CUDA device")
        print(f"gpu_check: no CUDA device ({why}); this check needs a GPU", file=sys.stderr)
        sys.exit(2)
    return torch


def check_device_pool(torch) -> None:
    from hyperrag.cache import DevicePool, KVCache, TransferEngine

    pool = DevicePool(1 << 20, 64, 16)
    ids = pool.allocate(20)
    grown = pool.segments == 2 and pool.num_blocks == 32
    src = np.random.default_rng(0).integers(0, 256, 20 << 20, dtype=np.uint8)
    pool.write(ids, src)
    back = np.empty_like(src)
    pool.read(ids, back)
    try:
        pool.allocate(45)
        over_budget_refused = False
    except MemoryError:
        over_budget_refused = True
    record("device pool: grows by segments, round trip, budget",
           f"segments={pool.segments} blocks={pool.num_blocks}/{pool.budget_blocks}",
           grown and np.array_equal(src, back) and over_budget_refused)

    cache = KVCache({"gpu": 8 << 20, "host": 32 << 20}, policy="lru")
    for i in range(12):  # 12 x 1 MiB through an 8 MiB gpu tier: demotions copy D2H through the engine
        cache.put("ns", [f"d{i}"], [16], [1 << 20])
    stats = cache.storage_stats()
    node = cache.match("ns", ["d0"]).node_ids[0]
    record("KVCache gpu tier on the device",
           f"gpu_on_device={cache.gpu_on_device} gpu blocks={stats['gpu']['blocks_used']} "
           f"host blocks={stats['host']['blocks_used']} errors={stats['errors']}",
           cache.gpu_on_device and stats["gpu"]["device"] and stats["errors"] == 0
           and cache.node(node).tier == "host")

    # stream=: a tensor still being produced on torch's stream is copied once it is ready.
    eng = TransferEngine(backend="cuda")
    x = torch.zeros(1 << 24, device="cuda")
    out = torch.empty(1 << 24, device="cuda")
    torch.cuda._sleep(50_000_000)  # keep torch's stream busy so an unordered copy would read zeros
    x.fill_(3.0)
    eng.wait(eng.submit([(out, x, x.numel() * 4)], stream=torch.cuda.current_stream().cuda_stream))
    record("submit(stream=) orders after torch's stream", f"copied value {out[0].item():.0f} (want 3)",
           bool((out == 3.0).all().item()))


def timed(fn, reps: int) -> float:
    fn()  # warm up
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def check_bandwidth(torch) -> None:
    from hyperrag.cache import TransferEngine

    eng = TransferEngine(threads=2, backend="cuda")
    stream = torch.cuda.Stream()
    for mib in SIZES_MIB:
        n = mib << 20
        host_a = torch.empty(n, dtype=torch.uint8).pin_memory()
        host_b = torch.empty(n, dtype=torch.uint8).pin_memory()
        dev_a = torch.empty(n, dtype=torch.uint8, device="cuda")
        dev_b = torch.empty(n, dtype=torch.uint8, device="cuda")
        host_a.random_(0, 256)
        reps = 30 if mib <= 4 else 10
        for name, dst, src in (("H2D", dev_a, host_a), ("D2H", host_b, dev_a), ("D2D", dev_b, dev_a)):
            def with_torch():
                with torch.cuda.stream(stream):
                    dst.copy_(src, non_blocking=True)  # one cudaMemcpyAsync
                stream.synchronize()

            def with_engine():
                eng.wait(eng.submit([(dst.data_ptr(), src.data_ptr(), n)]))

            t_torch, t_engine = timed(with_torch, reps), timed(with_engine, reps)
            gbps_torch, gbps_engine = n / t_torch / 1e9, n / t_engine / 1e9
            ratio = gbps_engine / gbps_torch
            record(f"{name} {mib:>2} MiB engine vs cudaMemcpyAsync",
                   f"{gbps_engine:6.1f} vs {gbps_torch:6.1f} GB/s ({ratio:.0%})", ratio >= MIN_BANDWIDTH_RATIO)
        eng.wait(eng.submit([(host_b, dev_a, n)]))
        record(f"round trip {mib} MiB exact", "H2D then D2H", bool(torch.equal(host_a, host_b)))


def check_model_reuse(torch) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from engine_fixtures import PathKVStore
    from hyperrag.data import load_corpus
    from hyperrag.engines.base import PrefillRequest
    from hyperrag.engines.hf_models import make_tiny_llama
    from hyperrag.engines.transformers_engine import TransformersEngine

    model_dir = make_tiny_llama(Path(tempfile.mkdtemp(prefix="gpu-check-")), num_layers=2, hidden_size=128,
                                num_heads=2, num_kv_heads=1, max_position_embeddings=2048)
    engine = TransformersEngine(str(model_dir), dtype="float32", device="cuda")
    texts = {d.doc_id: d.text for d in load_corpus()[:12]}
    docs = sorted(texts)
    rng = np.random.default_rng(0)
    store, ns = PathKVStore(), engine.namespace()
    queries, hits, worst, same = 0, 0, 0.0, 0
    for q in range(24):
        path = [docs[i] for i in rng.choice(len(docs), size=3, replace=False)] if q % 3 else [docs[0], docs[1], docs[q % 12]]
        prompt = engine.prompt(path, doc_texts=[texts[d] for d in path], question="What is this about?")
        cached = store.match(ns, prompt.segment_ids)
        reused = engine.generate(PrefillRequest(ns, prompt, cached), max_new_tokens=16)
        fresh = engine.generate(PrefillRequest(ns, prompt), max_new_tokens=16)
        store.insert(ns, prompt.segment_ids, reused.prefill.new_kv)
        worst = max(worst, float(np.abs(reused.prefill.logits - fresh.prefill.logits).max()))
        same += reused.token_ids == fresh.token_ids
        hits += len(cached) > prompt.fixed
        queries += 1
    record(f"tiny llama on GPU: reuse vs no cache ({queries} queries)",
           f"{hits} with reuse, same tokens {same}/{queries}, max logit diff {worst:.1e}",
           queries >= MIN_REUSE_QUERIES and hits >= 10 and same == queries and worst <= GPU_LOGIT_TOL)


def main() -> int:
    torch = require_device()
    print(f"gpu_check on {torch.cuda.get_device_name(0)}", flush=True)
    for check in (check_device_pool, check_bandwidth, check_model_reuse):
        try:
            check(torch)
        except Exception as e:  # a crash is a failed check, reported in the table
            record(check.__name__, f"{type(e).__name__}: {e}", False)
    width = max(len(c) for c, _, _ in rows)
    print("\n" + "=" * (width + 60))
    for check, result, ok in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {check:<{width}}  {result}")
    failed = sum(not ok for _, _, ok in rows)
    print(f"{len(rows) - failed}/{len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
