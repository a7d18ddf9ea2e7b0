"""`hyperrag optimize` through the installed console script: table, JSON, plot.

Every test runs the real entry point in a subprocess, so what is checked is what a user
gets (argument parsing, exit status, stdout/stderr), not a parser the test built itself.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _entry_point():
    """The script pip installed beside this interpreter, else the first `hyperrag` on PATH;
    without either, `python -m hyperrag.cli` (test_console_script_is_installed then fails)."""
    exe = shutil.which("hyperrag", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return [exe] if exe else [sys.executable, "-m", "hyperrag.cli"]


HYPERRAG = _entry_point()


def run_hyperrag(*args, timeout=120):
    """Run the command; every assertion message should show ``proc.args`` (which entry point ran)."""
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables at 80 columns when piped
    return subprocess.run([*HYPERRAG, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def test_console_script_is_installed():
    assert Path(HYPERRAG[0]).name == "hyperrag", (
        f"no `hyperrag` console script (scripts/install.sh installs it); the CLI tests ran {HYPERRAG} instead")


def test_optimize_prints_frontier_table_and_summary():
    proc = run_hyperrag("optimize", "--paradigm", "hyperscale", "--model", "llama-3.1-8b", "--gpu", "H100")
    assert proc.returncode == 0, (proc.args, proc.stderr)
    assert "Pareto frontier: hyperscale, llama-3.1-8b on H100-SXM" in proc.stdout
    assert "QPS/chip" in proc.stdout and "placement" in proc.stdout
    assert "pareto_size=" in proc.stdout and "TTFT=" in proc.stdout
    assert proc.stderr == ""


def test_optimize_presets_are_case_insensitive():
    proc = run_hyperrag("optimize", "--paradigm", "long_context", "--model", "LLAMA_3_1_70B", "--gpu", "h200",
                        "--host-budget-gb", "512")
    assert proc.returncode == 0, (proc.args, proc.stderr)
    assert "long_context, llama-3.1-70b on H200" in proc.stdout


def test_optimize_json_matches_search():
    from hyperrag.plan import RAGOptimize, RAGOptimizeConfig

    proc = run_hyperrag("optimize", "--paradigm", "iterative", "--gpu", "H200", "--json")
    assert proc.returncode == 0, (proc.args, proc.stderr)
    data = json.loads(proc.stdout)
    expected = RAGOptimize(RAGOptimizeConfig(paradigm="iterative", gpu="H200")).optimize()
    assert data["model"] == "llama-3.1-70b" and data["gpu"] == "H200"
    assert len(data["candidates"]) == 180
    assert len(data["frontier"]) == len(expected.frontier)
    assert data["best"]["ttft_s"] == pytest.approx(expected.best.ttft_s)


def test_optimize_plot_writes_png(tmp_path):
    path = tmp_path / "frontier.png"
    proc = run_hyperrag("optimize", "--paradigm", "rewriter_reranker", "--plot", path, "--qps-target", "1")
    assert proc.returncode == 0, (proc.args, proc.stderr)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"plot written to {path}" in proc.stdout


def test_optimize_plot_with_json_keeps_stdout_pure_json(tmp_path):
    path = tmp_path / "frontier.png"
    proc = run_hyperrag("optimize", "--json", "--plot", path)
    assert proc.returncode == 0, (proc.args, proc.stderr)
    assert json.loads(proc.stdout)["paradigm"] == "hyperscale"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
