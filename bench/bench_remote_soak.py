"""Soak of the remote tier: many queries against Redis, memory and queues sampled every second.

A controller on a tiny random Llama (float32, fast on CPU) serves queries of
the system prompt and 2 documents drawn Zipf(1.1) over the bundled corpus,
with memory tiers far smaller than the working set, so documents are evicted
and brought back from Redis all the time; new KV is written back through the
bounded queue. Redis runs with maxmemory and allkeys-lru. A thread samples the
process's RSS, the write-back queue and Redis's used memory every second.
Reported: the RSS slope after warm-up (the first ``--warmup`` fraction of the
samples is left out), the largest queue depth, hits and errors.

    python bench/bench_remote_soak.py [--queries 20000] [--warmup 0.2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--gpu-mb", type=int, default=16, help="memory tier (MiB): a fraction of the working set")
    ap.add_argument("--redis-mb", type=int, default=256, help="Redis maxmemory (MiB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from hyperrag import Query, RAGOptimize, RAGOptimizeConfig
    from hyperrag.cache.redis_store import RedisKVStore
    from hyperrag.data import load_corpus, load_queries
    from hyperrag.engines.hf_models import make_tiny_llama
    from hyperrag.serve import bench as B
    from hyperrag.testing.redis_server import RedisServer

    torch.set_num_threads(1)
    corpus = load_corpus()
    texts = {d.doc_id: d.text for d in corpus}
    ids = sorted(texts)
    questions = [q.text for q in load_queries(200)]
    rng = np.random.default_rng(args.seed)
    weights = 1 / np.arange(1, len(ids) + 1) ** 1.1
    weights /= weights.sum()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_llama(Path(tmp) / "tiny", num_layers=2, hidden_size=128, num_heads=2, num_kv_heads=1)
        server = RedisServer(Path(tmp), maxmemory=f"{args.redis_mb}mb")
        store = RedisKVStore(server.url, write="back", queue_size=64, timeout_s=1.0)
        ctrl = RAGOptimize(RAGOptimizeConfig()).build_controller(
            engine="transformers", model_path=str(model), engine_kwargs={"dtype": "float32"},
            default_output_tokens=1, speculative=False, gpu_bytes=args.gpu_mb << 20, host_bytes=0, remote=store)
        samples, done = [], threading.Event()
        served = [0]
        client = server.client()

        def sample():
            start = time.monotonic()
            while not done.wait(1.0):
                samples.append({"t_s": time.monotonic() - start, "queries": served[0], "rss_mib": rss_mib(),
                                "queued": store.queued,
                                "redis_used_mib": client.info("memory")["used_memory"] / 2**20})

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        try:
            for i in range(args.queries):
                picked = list(rng.choice(ids, 2, replace=False, p=weights))
                ctrl.process(Query(query_id=f"q{i}", text=questions[i % len(questions)], doc_ids=picked,
                                   doc_texts=[texts[d] for d in picked]))
                served[0] = i + 1
                if (i + 1) % 2000 == 0:
                    print(f"  {i + 1} queries, RSS {rss_mib():.1f} MiB, queue {store.queued}", flush=True)
        finally:
            seconds = time.monotonic() - start
            done.set()
            sampler.join()
            store.flush(10.0)
            server.stop()
    m, s = ctrl.metrics(), store.stats()
    steady = samples[int(len(samples) * args.warmup):]
    t = np.array([x["t_s"] for x in steady])
    q = np.array([x["queries"] for x in steady], dtype=float)
    rss = np.array([x["rss_mib"] for x in steady])
    per_second = float(np.polyfit(t, rss, 1)[0]) if len(steady) > 1 else 0.0
    per_10k = float(np.polyfit(q, rss, 1)[0]) * 10_000 if len(steady) > 1 else 0.0
    summary = {"queries": args.queries, "seconds": seconds, "queries_per_s": args.queries / seconds,
               "samples": len(samples), "steady_samples": len(steady),
               "rss_slope_mib_per_10k_queries": per_10k, "rss_slope_mib_per_min": per_second * 60,
               "rss_first_steady_mib": float(rss[0]) if len(rss) else 0.0,
               "rss_last_mib": float(rss[-1]) if len(rss) else 0.0,
               "max_queued": max(x["queued"] for x in samples) if samples else 0,
               "max_redis_used_mib": max(x["redis_used_mib"] for x in samples) if samples else 0.0,
               "remote_hits": m.remote_hits, "remote_errors": m.remote_errors,
               "evictions": m.evictions, "store": s.__dict__}
    B.print_table("remote-tier soak", [summary],
                  (("queries", "queries", "d"), ("q/s", "queries_per_s", ".1f"),
                   ("RSS slope MiB/10k q", "rss_slope_mib_per_10k_queries", ".3f"),
                   ("RSS slope MiB/min", "rss_slope_mib_per_min", ".3f"), ("max queue", "max_queued", "d"),
                   ("remote hits", "remote_hits", "d"), ("remote errors", "remote_errors", "d")))
    path = B.write_json("bench_remote_soak", samples, vars(args), summary=summary, engine="transformers")
    print("wrote", path)


if __name__ == "__main__":
    main()
