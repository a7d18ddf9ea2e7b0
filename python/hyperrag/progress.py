"""Progress shown to people, and the dependencies' own output kept out of it.

Everything goes to stderr (stdout stays for results and tables) through rich,
and only when stderr is a terminal: logs of CI runs and piped commands get no
bars. Long work shows a bar (``bar``) or a spinner
(``status``); transformers' weight-loading bars are switched off while a model
loads (``quiet_dependencies``), since our own status line says the same once.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _wanted(enabled: bool) -> bool:
    return bool(enabled) and sys.stderr.isatty()


class Bar:
    """One task's progress bar: ``advance(n)``, ``describe(text)``; a no-op when disabled."""

    def __init__(self, description: str, total: int, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=_console(), disable=not _wanted(enabled),
                                  transient=True)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)

    def describe(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def __enter__(self) -> "Bar":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()


def bar(description: str, total: int, enabled: bool = True) -> Bar:
    """A transient progress bar on stderr (shown when enabled and stderr is a terminal)."""
    return Bar(description, total, enabled)


@contextlib.contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``message`` on stderr while the block runs (when enabled and stderr is a terminal)."""
    if not _wanted(enabled):
        yield
        return
    with _console().status(message):
        yield


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """transformers' progress bars off for the block (restored after): a model load
    then prints nothing of its own."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # nothing of transformers is loaded, so nothing of it to quiet
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
