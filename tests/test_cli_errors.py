"""Bad input to the `hyperrag` console script: one line on stderr, exit 2, no traceback, no work done.

A bad value is refused while the command line is parsed, so nothing is printed on stdout
(no table: no benchmark ran); the message names the flag and what it allows.
"""
import os
from pathlib import Path

import pytest

from test_cli import run_hyperrag

TINY_BENCH = ("bench", "--queries", "20", "--repeats", "1", "--paradigm", "hyperscale", "--no-progress")


def assert_one_line_error(proc, status, prefix, *fragments):
    shown = f"{proc.args} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode == status, shown
    assert "Traceback" not in proc.stderr, shown
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.endswith("\n"), shown
    assert proc.stderr.startswith(f"{prefix}: error: "), shown
    for fragment in fragments:
        assert fragment in proc.stderr, shown


# (arguments, then what the message must contain: the flag first, then the allowed values)
BAD_OPTIMIZE = [
    (["--paradigm", "agentic"], "--paradigm", "'hyperscale', 'long_context', 'iterative', 'rewriter_reranker'"),
    (["--model", "llama-9"], "--model", "allowed: llama-3.2-1b"),
    (["--gpu", "V100"], "--gpu", "allowed: A100-40GB"),
    (["--gpu-budget-gb", "0"], "--gpu-budget-gb", "> 0, got '0'"),
    (["--host-budget-gb", "-2"], "--host-budget-gb", "> 0, got '-2'"),
    (["--qps-target", "fast"], "--qps-target", "must be a finite number > 0"),
    (["--ttft-slo-ms", "inf"], "--ttft-slo-ms", "must be a finite number > 0"),
    (["--plot", "{tmp}/missing/frontier.png"], "--plot", "missing' does not exist"),
    (["--plot", "{tmp}/frontier.jpg"], "--plot", "ending in .png"),
    (["--plot", "{tmp}/file.txt/frontier.png"], "--plot", "file.txt' is not a folder"),
    (["--plot", "{unwritable}/frontier.png"], "--plot", "is not writable"),
    (["--bogus", "1"], "--bogus", "allowed: --help, --paradigm, --model"),
]
BAD_BENCH = [
    (["--load", "2"], "--load", "fraction in (0, 1)"),
    (["--load", "0"], "--load", "fraction in (0, 1)"),
    (["--zipf-alpha", "-1"], "--zipf-alpha", "> 0, got '-1'"),
    (["--queries", "0"], "--queries", "positive integer, got '0'"),
    (["--repeats", "0"], "--repeats", "positive integer, got '0'"),
    (["--queries", "1e3"], "--queries", "positive integer, got '1e3'"),
    (["--paradigm", "nope"], "--paradigm", "'all', 'hyperscale'"),
    (["--out", "{tmp}/file.txt/out"], "--out", "file.txt' is not a folder"),
    (["--out", "{unwritable}"], "--out", "is not writable"),
    (["--out", "{unwritable}/new/out"], "--out", "is not writable"),
    (["--plot", "{tmp}/x.png"], "--plot", "allowed: --help, --paradigm, --queries"),
]


@pytest.fixture
def paths(tmp_path):
    """{tmp}: an empty folder holding file.txt; {unwritable}: a folder no one may write in."""
    (tmp_path / "file.txt").write_text("not a folder")
    if os.geteuid() != 0:
        unwritable = tmp_path / "read-only"
        unwritable.mkdir(mode=0o555)
    elif Path("/proc/self").is_dir():  # root ignores permission bits, not a pseudo-filesystem
        unwritable = Path("/proc/self")
    else:
        pytest.skip("running as root without /proc: no folder is unwritable")
    yield {"tmp": tmp_path, "unwritable": unwritable}
    if unwritable.is_relative_to(tmp_path):
        unwritable.chmod(0o755)


def _fill(argv, paths):
    return [a.format(**paths) for a in argv]


@pytest.mark.parametrize("argv, flag, allowed", BAD_OPTIMIZE, ids=[" ".join(c[0]) for c in BAD_OPTIMIZE])
def test_bad_optimize_flag(argv, flag, allowed, paths):
    proc = run_hyperrag("optimize", *_fill(argv, paths))
    assert_one_line_error(proc, 2, "hyperrag optimize", flag, allowed)
    assert proc.stdout == ""


@pytest.mark.parametrize("argv, flag, allowed", BAD_BENCH, ids=[" ".join(c[0]) for c in BAD_BENCH])
def test_bad_bench_flag_is_refused_before_the_run(argv, flag, allowed, paths):
    proc = run_hyperrag(*TINY_BENCH, *_fill(argv, paths))
    assert_one_line_error(proc, 2, "hyperrag bench", flag, allowed)
    assert proc.stdout == ""  # no table: the benchmark never started
    assert not list(paths["tmp"].rglob("*.json"))


@pytest.mark.parametrize("argv, allowed", [
    ([], "a subcommand is required; allowed: optimize, bench, rerank, serve"),
    (["--verbose"], "allowed: optimize, bench, rerank, serve (unrecognized: --verbose)"),
    (["deploy"], "invalid choice: 'deploy' (choose from 'optimize', 'bench', 'rerank', 'serve')"),
])
def test_bad_subcommand(argv, allowed):
    assert_one_line_error(run_hyperrag(*argv), 2, "hyperrag", allowed)


@pytest.mark.parametrize("argv, fragments", [
    # each value passes its own check; together they do not (the config refuses them)
    (["--model", "llama-3.1-405b", "--gpu", "A10G"], ("model llama-3.1-405b", "does not fit on 4 x A10G")),
    (["--host-budget-gb", "100000"], ("host_budget_gb=100000.0 exceeds host",)),
])
def test_conflicting_optimize_options(argv, fragments):
    assert_one_line_error(run_hyperrag("optimize", *argv), 2, "hyperrag optimize", *fragments)


def test_failed_output_write_is_one_line_and_exit_1(tmp_path):
    pytest.importorskip("hyperrag.cache", reason="needs the native cache module")
    (tmp_path / "bench_paradigms.json").mkdir()  # the folder is fine; the file cannot be written
    proc = run_hyperrag(*TINY_BENCH, "--out", tmp_path)
    assert_one_line_error(proc, 1, "hyperrag bench", "Is a directory", "bench_paradigms.json")


@pytest.mark.parametrize("argv", [["--help"], ["optimize", "--help"], ["bench", "-h"]])
def test_help_exits_0(argv):
    proc = run_hyperrag(*argv)
    assert proc.returncode == 0, (proc.args, proc.stderr)
    assert proc.stdout.startswith("usage: hyperrag") and proc.stderr == ""
