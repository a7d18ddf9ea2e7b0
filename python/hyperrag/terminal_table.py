"""Tables printed for people: every cell whole, at any terminal width.

rich shrinks a table wider than the terminal by cutting cells ("46…"), which
turns numbers into wrong numbers. Here a table that does not fit loses whole
columns from the right instead (the leftmost are the identifying and headline
ones), and a line under it names what was left out. Piped output is not a
terminal: it gets every column.
"""
from __future__ import annotations

from typing import Optional, Sequence

# rich's default box: "│ " before each cell, " " after it, and the closing "│".
_CELL_PADDING = 3
_PIPED_WIDTH = 200


def fit_columns(widths: Sequence[int], available: int) -> int:
    """How many leading columns of these widths fit in ``available`` characters (at least one)."""
    used, count = 1, 0
    for width in widths:
        if used + width + _CELL_PADDING > available and count:
            break
        used += width + _CELL_PADDING
        count += 1
    return count


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
                justify: Optional[Sequence[str]] = None, console=None) -> None:
    """Print rows (already formatted strings) under headers; ``justify`` per column
    ("right" by default). Columns that do not fit the console are left out whole."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, _PIPED_WIDTH))
    # A header may wrap at its spaces; a cell never wraps, and its column never gets narrower than it.
    cell_widths = [max([0] + [len(r[i]) for r in rows]) for i in range(len(headers))]
    widths = [max([cell_widths[i]] + [len(word) for word in h.split()]) for i, h in enumerate(headers)]
    shown = fit_columns(widths, console.width)
    table = Table(title=title)
    for i in range(shown):
        table.add_column(headers[i], justify=(justify[i] if justify else "right"), width=widths[i])
    for row in rows:
        table.add_row(*row[:shown])
    console.print(table)
    if shown < len(headers):
        console.print(f"({len(headers) - shown} columns left out at {console.width} characters: "
                      f"{', '.join(headers[shown:])}; widen the terminal or pipe the output to see them)",
                      markup=False, highlight=False)
