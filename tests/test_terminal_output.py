"""What a person sees in an 80-column terminal: `hyperrag optimize` and `hyperrag bench` run
in a real pseudo-terminal of that width; every table line fits and no cell is cut."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import termios

import pytest

pytest.importorskip("hyperrag.cache", reason="bench needs the native cache module")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDTH = 80


def run_in_terminal(*argv: str, columns: int = WIDTH, timeout: float = 120.0) -> str:
    """The output of `hyperrag argv...` in a pseudo-terminal ``columns`` wide, escapes removed."""
    exe = shutil.which("hyperrag")
    assert exe, "the hyperrag console script is not installed"
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of the given size, as a person's shell would give it
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        os.environ.pop("COLUMNS", None)
        os.execv(exe, [exe, *argv])
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, f"hyperrag {' '.join(argv)} printed nothing for {timeout} s"
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks).decode(errors="replace")
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")


def assert_fits(text: str) -> list:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, max(lines, key=len)
    assert "…" not in text  # rich's mark of a cut cell
    return lines


def table_rows(lines: list) -> list:
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│")]


def test_optimize_table_fits_80_columns_with_every_number_whole():
    lines = assert_fits(run_in_terminal("optimize", "--paradigm", "hyperscale"))
    rows = table_rows(lines)
    result = json.loads(run_in_terminal("optimize", "--paradigm", "hyperscale", "--json", columns=200))
    frontier = result["frontier"]
    assert len(rows) == len(frontier)
    for row, schedule in zip(rows, frontier):  # the cells are the numbers, not prefixes of them
        assert row[1] == str(schedule["num_gpus"]) and row[2] == str(schedule["batch_size"])
        assert row[4] == f"{schedule['ttft_s'] * 1e3:.1f}"


def test_bench_table_fits_80_columns_and_names_what_it_leaves_out():
    text = run_in_terminal("bench", "--paradigm", "hyperscale", "--queries", "20", "--repeats", "1", "--no-progress")
    lines = assert_fits(text)
    rows = table_rows(lines)
    assert len(rows) == 1 and rows[0][0] == "hyperscale"
    for cell in rows[0][1:]:  # whole numbers with their unit, never a cut one
        assert re.fullmatch(r"[\w.\-]+( ms|x|%)?|\d+(\.\d+)?( ms|x|%)?", cell), cell
    wide = run_in_terminal("bench", "--paradigm", "hyperscale", "--queries", "20", "--repeats", "1", "--no-progress",
                           columns=250)
    all_columns = len(table_rows(wide.splitlines())[0])
    if len(rows[0]) < all_columns:
        assert f"{all_columns - len(rows[0])} columns left out at {WIDTH} characters" in " ".join(lines)
