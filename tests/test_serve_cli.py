"""`hyperrag bench` through the installed console script: table, and JSON holding the options and rows."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("hyperrag.cache", reason="needs the native cache module")
from test_cli import run_hyperrag  # noqa: E402

TINY = ("--queries", "20", "--repeats", "1", "--no-progress")


def test_bench_prints_the_table_and_writes_json(tmp_path):
    out_dir = tmp_path / "results" / "today"  # created by the run
    proc = run_hyperrag("bench", "--paradigm", "iterative", *TINY, "--zipf-alpha", "0.9", "--out", out_dir)
    assert proc.returncode == 0, (proc.args, proc.stderr)
    payload = json.loads((out_dir / "bench_paradigms.json").read_text())
    assert payload["args"] == {"paradigm": "iterative", "queries": 20, "repeats": 1, "load": 0.6,
                               "zipf_alpha": 0.9, "ablations": False, "json": False, "out": str(out_dir),
                               "no_progress": True}
    rows = payload["rows"]
    assert [r["paradigm"] for r in rows] == ["iterative"] and "iterative" in proc.stdout
    r = rows[0]
    assert r["queries"] == 20 and r["repeats"] == 1
    assert r["speedup_mean"] == pytest.approx(r["baseline_mean_ttft_s"] / r["hyperrag_mean_ttft_s"])
    assert f"{r['hyperrag_mean_ttft_s'] * 1000:.1f} ms" in proc.stdout
    assert 0 < r["hit_rate"] <= 1  # hops reuse the previous hop's documents


def test_bench_json_prints_the_rows_instead_of_tables():
    proc = run_hyperrag("bench", "--paradigm", "iterative", *TINY, "--json")
    assert proc.returncode == 0, (proc.args, proc.stderr)
    rows = json.loads(proc.stdout)["paradigms"]  # stdout is the JSON alone: no table around it
    assert [r["paradigm"] for r in rows] == ["iterative"] and rows[0]["queries"] == 20


def test_serve_cli_module_is_the_bench_subcommand():
    proc = subprocess.run([sys.executable, "-m", "hyperrag.serve.cli", "--queries", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, (proc.args, proc.stderr)
    assert proc.stderr == "hyperrag bench: error: argument --queries: must be a positive integer, got '0'\n"
