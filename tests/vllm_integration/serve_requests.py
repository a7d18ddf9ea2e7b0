"""Serve a list of RAG requests through one vLLM instance and print the outputs as JSON.

Run by tests/vllm_integration/test_vllm_connector.py in a fresh process per configuration
(vLLM's KV connector is process-wide state):
    python serve_requests.py CONFIG.json  ->  {"outputs": [[token ids], ...], "stats": {...}}
CONFIG: {"model", "dtype", "mode": "plain" | "prefix_cache" | "hyperrag", "directory", "requests":
[{"doc_ids", "doc_texts", "question"}], "max_tokens"}
"""
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the connector's store lives in this process


def main():
    config = json.load(open(sys.argv[1]))
    from vllm import LLM

    from hyperrag.cache.segment_store import shared_store
    from hyperrag.integrations.vllm import RagPrompts, make_llm
    from hyperrag.integrations.vllm.llm import DEFAULT_CAPACITIES

    common = dict(dtype=config["dtype"], enforce_eager=True, max_model_len=4096, seed=0)
    mode = config["mode"]
    if mode == "hyperrag":
        llm = make_llm(config["model"], directory=config.get("directory"), enable_prefix_caching=False, **common)
    else:
        llm = LLM(model=config["model"], enable_prefix_caching=mode == "prefix_cache", **common)
    prompts = RagPrompts(config["model"], dtype=config["dtype"])
    outputs, hits = [], []
    store = shared_store(DEFAULT_CAPACITIES, config.get("directory"), "gdsf") if mode == "hyperrag" else None
    for r in config["requests"]:
        before = store.stats().hit_segments if store else 0
        prompt, sampling = prompts.request(r["doc_ids"], doc_texts=r["doc_texts"], question=r["question"],
                                           max_tokens=config.get("max_tokens", 16))
        if mode != "hyperrag":
            sampling.extra_args = None
        out = llm.generate([prompt], sampling, use_tqdm=False)[0]
        outputs.append(list(out.outputs[0].token_ids))
        hits.append(store.stats().hit_segments - before if store else 0)
    stats = store.stats().as_dict() if store else {}
    print("RESULT " + json.dumps({"outputs": outputs, "hits": hits, "stats": stats}), flush=True)


if __name__ == "__main__":
    main()
