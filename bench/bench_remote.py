"""The shared remote tier on Redis: TTFT of a remote hit vs recompute, and get/set bandwidth.

One throwaway redis-server on this machine (hyperrag.testing.redis_server).

- TTFT: a first controller serves N queries (the system prompt and top-3
  documents of the bundled corpus, every query a new document path) and
  shares their KV; a second controller in the same process, with empty
  memory tiers, serves the same prompts from the shared tier; a controller
  without cache recomputes them. SmolLM2-135M bf16, queries interleaved per
  system, median over passes (each pass starts from an empty Redis and fresh
  memory).
- Bandwidth: RedisKVStore put/get of payloads of each size (write-through,
  one at a time, as the serving path does) against the bare redis-py client
  it runs on and redis-benchmark's SET/GET (C), values of the same size on
  the same server.

    python bench/bench_remote.py [--queries 30] [--passes 3] [--sizes-mib 1,8,64]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def prompts(n: int, seed: int):
    from hyperrag import Query
    from hyperrag.data import load_corpus, load_queries

    corpus = load_corpus()
    texts = {d.doc_id: d.text for d in corpus}
    rng = np.random.default_rng(seed)
    ids = sorted(texts)
    out, seen = [], set()
    for q in load_queries():
        picked = tuple(rng.choice(ids, 3, replace=False))
        if picked in seen:
            continue
        seen.add(picked)
        out.append(Query(query_id=f"q{len(out)}", text=q.text, doc_ids=list(picked),
                         doc_texts=[texts[d] for d in picked]))
        if len(out) == n:
            return out
    return out


def ttft_pass(engine, url: str, queries) -> dict:
    from hyperrag import RAGOptimize, RAGOptimizeConfig
    from hyperrag.cache.redis_store import RedisKVStore

    def build(**kw):
        return RAGOptimize(RAGOptimizeConfig()).build_controller(engine=engine, default_output_tokens=1,
                                                                 speculative=False, **kw)

    writer = build(remote=RedisKVStore(url, write="through", timeout_s=5.0))
    reader = build(remote=RedisKVStore(url, write="through", timeout_s=5.0))
    none = build(use_cache=False)
    out = {"remote_hit": [], "recompute": [], "memory_hit": []}
    for q in queries:
        writer.process(q)  # computes and shares the path
    for q in queries:  # interleaved: the same prompt from Redis, then recomputed
        out["remote_hit"].append(reader.process(q).ttft_s)
        out["recompute"].append(none.process(q).ttft_s)
    for q in queries:
        out["memory_hit"].append(reader.process(q).ttft_s)
    m = reader.metrics()
    out["remote_hits"] = m.remote_hits
    out["remote_hit_bytes"] = m.remote_hit_bytes
    out["remote_errors"] = m.remote_errors
    return out


def store_bandwidth(url: str, size: int, count: int) -> dict:
    from hyperrag.cache.redis_store import RedisKVStore

    store = RedisKVStore(url, write="through", timeout_s=30.0)
    payloads = [np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8) for i in range(count)]
    start = time.perf_counter()
    for i, p in enumerate(payloads):
        store.put("bench", [f"k{i}"], p)
    set_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        assert store.get("bench", [f"k{i}"]) is not None
    get_s = time.perf_counter() - start
    return {"set_gbps": size * count / set_s / 1e9, "get_gbps": size * count / get_s / 1e9}


def redis_py(url: str, size: int, count: int) -> dict:
    """redis-py's own SET/GET of ``size``-byte values: the client HyperRAG runs on, without blobs."""
    import redis

    client = redis.Redis.from_url(url)
    values = [np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8).tobytes() for i in range(count)]
    start = time.perf_counter()
    for i, v in enumerate(values):
        client.set(f"raw{i}", v)
    set_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        client.get(f"raw{i}")
    get_s = time.perf_counter() - start
    return {"set_gbps": size * count / set_s / 1e9, "get_gbps": size * count / get_s / 1e9}


def redis_benchmark(port: int, size: int, count: int) -> dict:
    """redis-benchmark SET/GET of ``size``-byte values, one client, no pipelining."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(count), "-c", "1",
                          "-d", str(size), "-q"], capture_output=True, text=True, timeout=600).stdout
    rates = {m.group(1).lower(): float(m.group(2))
             for m in re.finditer(r"(SET|GET): ([\d.]+) requests per second", out.replace("\r", "\n"))}
    return {f"{op}_gbps": rates[op] * size / 1e9 for op in ("set", "get")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--sizes-mib", default="1,8,64", help="64 MiB takes the chunked path (chunks of 32 MiB)")
    ap.add_argument("--count", type=int, default=40, help="payloads per size for the bandwidth runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from hyperrag.engines.transformers_engine import TransformersEngine
    from hyperrag.serve import bench as B
    from hyperrag.testing.redis_server import RedisServer

    torch.set_num_threads(2)
    engine = TransformersEngine("smollm2")
    queries = prompts(args.queries, args.seed)
    rows, passes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), maxmemory="4gb")
        try:
            for p in range(args.passes):
                server.client().flushall()
                result = ttft_pass(engine, server.url, queries)
                passes.append(result)
                for system in ("remote_hit", "recompute", "memory_hit"):
                    rows += [{"section": "ttft", "pass": p, "system": system, "query": i, "ttft_s": t}
                             for i, t in enumerate(result[system])]
                print(f"  TTFT pass {p + 1}/{args.passes} done", flush=True)
            bandwidth = {}
            for mib in (float(x) for x in args.sizes_mib.split(",")):
                size = int(mib * (1 << 20))
                server.client().flushall()
                ours = store_bandwidth(server.url, size, args.count)
                server.client().flushall()
                client = redis_py(server.url, size, args.count)
                server.client().flushall()
                theirs = redis_benchmark(server.port, size, args.count)
                bandwidth[f"{mib:g}"] = {"hyperrag": ours, "redis_py": client, "redis_benchmark": theirs}
                rows.append({"section": "bandwidth", "mib": mib,
                             **{f"{who}_{k}": v for who, r in bandwidth[f"{mib:g}"].items() for k, v in r.items()}})
                print(f"  bandwidth {mib:g} MiB done", flush=True)
        finally:
            server.stop()
    ttft = {}
    for system in ("remote_hit", "recompute", "memory_hit"):
        per_query = np.array([statistics.median(p[system][i] for p in passes) for i in range(len(queries))])
        ttft[system] = {"mean_s": float(per_query.mean()), "median_s": float(np.median(per_query)),
                        "p90_s": float(np.percentile(per_query, 90))}
    summary = {"ttft": ttft, "bandwidth": bandwidth, "remote_hits_per_pass": passes[0]["remote_hits"],
               "remote_hit_bytes_per_pass": passes[0]["remote_hit_bytes"],
               "remote_errors": sum(p["remote_errors"] for p in passes),
               "speedup_remote_vs_recompute": ttft["recompute"]["mean_s"] / ttft["remote_hit"]["mean_s"]}
    B.print_table(f"TTFT, SmolLM2-135M bf16, {len(queries)} prompts (system + 3 documents), median of "
                  f"{args.passes} passes", [{"system": k, **v} for k, v in ttft.items()],
                  (("system", "system", "s"), ("mean", "mean_s", B.ms), ("median", "median_s", B.ms),
                   ("p90", "p90_s", B.ms)))
    B.print_table("get/set bandwidth on one redis-server (GB/s, one client, one request at a time)",
                  [{"size": f"{k} MiB", **{f"{who}_{op}": v[who][f"{op}_gbps"] for who in v for op in ("set", "get")}}
                   for k, v in bandwidth.items()],
                  (("value size", "size", "s"), ("HyperRAG set", "hyperrag_set", ".2f"),
                   ("redis-py set", "redis_py_set", ".2f"), ("redis-benchmark set", "redis_benchmark_set", ".2f"),
                   ("HyperRAG get", "hyperrag_get", ".2f"), ("redis-py get", "redis_py_get", ".2f"),
                   ("redis-benchmark get", "redis_benchmark_get", ".2f")))
    path = B.write_json("bench_remote", rows, vars(args), summary=summary, engine="transformers")
    print("wrote", path)


if __name__ == "__main__":
    main()
