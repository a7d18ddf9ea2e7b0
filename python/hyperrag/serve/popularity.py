"""How often each document is requested, for choosing the order of uncached documents.

Putting the more requested documents first makes the prefixes of different
queries meet: with Zipf popularity, many queries then share [system][hot doc]
and reuse it, where retrieval order scatters the same documents over many
first positions.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Sequence


class DocumentPopularity:
    """Decayed request counts per document id: every ``half_life`` requests all counts
    halve and documents whose count falls below one are forgotten, so memory follows
    the working set, not the history. Thread-safe (one lock)."""

    def __init__(self, half_life: int = 10_000):
        if isinstance(half_life, bool) or not isinstance(half_life, int) or half_life <= 0:
            raise ValueError(f"half_life must be a positive integer, got {half_life!r}")
        self.half_life = half_life
        self._counts: Dict[str, float] = {}
        self._seen = 0
        self._lock = threading.Lock()

    def observe(self, doc_ids: Sequence[str]) -> None:
        with self._lock:
            for d in doc_ids:
                self._counts[d] = self._counts.get(d, 0.0) + 1.0
            self._seen += 1
            if self._seen % self.half_life == 0:
                self._counts = {d: c / 2 for d, c in self._counts.items() if c >= 2}

    def ranked(self, doc_ids: Sequence[str]) -> List[int]:
        """Indices of doc_ids, most requested first (ties keep their order)."""
        with self._lock:
            counts = [self._counts.get(d, 0.0) for d in doc_ids]
        return sorted(range(len(doc_ids)), key=lambda i: -counts[i])

    def __len__(self) -> int:
        return len(self._counts)
