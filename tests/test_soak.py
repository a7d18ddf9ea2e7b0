"""A long stream of new documents keeps the tree's names and the cache's version records
bounded by the resident nodes (bench/bench_soak.py runs the 50,000-query version and
reports the RSS slope)."""
import argparse
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_soak", Path(__file__).parents[1] / "bench" / "bench_soak.py")
bench_soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_soak)


def test_names_and_version_records_stay_bounded_by_resident_nodes():
    args = argparse.Namespace(queries=5000, fresh=20, popular=4, popular_set=1000, gpu_gb=1.0, host_gb=4.0,
                              storage_scale=1 << 12, every=250, seed=1)
    out = bench_soak.soak(args)
    rows, summary = out["rows"], out["summary"]
    assert summary["distinct_docs"] > 100_000 and summary["evictions"] > 50_000
    for r in rows:
        assert r["interned_names"] <= r["num_nodes"] + 1, r  # one namespace, one name per document node
        assert r["version_records"] <= max(4096, 2 * r["num_nodes"]) + 1, r
    # The cache is full from the first checkpoint on; it does not grow with the stream.
    assert max(r["num_nodes"] for r in rows) <= 1.2 * min(r["num_nodes"] for r in rows)
