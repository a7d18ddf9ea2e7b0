"""One serving process for the remote-tier tests: a controller on a tiny model, queries in,
greedy answers and metrics out (one JSON line on stdout).

    python remote_serve.py MODEL_DIR (REDIS_URL | none) N_QUERIES
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_workload import queries  # noqa: E402

from hyperrag import RAGOptimize, RAGOptimizeConfig  # noqa: E402
from hyperrag.cache.redis_store import RedisKVStore  # noqa: E402


def main():
    model_dir, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    remote = None if url == "none" else RedisKVStore(url, write="through", timeout_s=0.3, max_backoff_s=0.2)
    kwargs = {"use_cache": False} if url == "none" else {"remote": remote}
    controller = RAGOptimize(RAGOptimizeConfig()).build_controller(
        engine="transformers", model_path=model_dir, engine_kwargs={"dtype": "float32"},
        default_output_tokens=6, speculative=False, **kwargs)
    answers = [controller.process(q).output_token_ids for q in queries(n)]
    m = controller.metrics()
    print(json.dumps({"answers": answers, "remote_hits": m.remote_hits, "remote_errors": m.remote_errors,
                      "remote_stats": remote.stats().__dict__ if remote else {}}))


if __name__ == "__main__":
    main()
