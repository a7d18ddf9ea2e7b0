"""FAISS retrieval with an exact flat index and a staged IVF search.

search_staged probes the IVF lists nearest to the query in growing batches
(an nprobe schedule) and yields the running top-k after each batch, so a
serving controller can start a speculative prefill on an interim top-k and
compare it with the final one. The lists are assigned once; each stage scans
only the lists it adds, so staging costs no repeated work, and the last stage
equals a plain IVF search at that nprobe.

Thread-safety: searches only read the indexes and may run from many threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    doc_ids: list          # best first
    scores: list           # inner products (cosine for normalized embeddings)
    nprobe: int            # IVF lists probed so far (0 for the exact search)
    final: bool = True     # False for interim stages of search_staged


EMBED_CHUNK = 256  # documents per embedder call: the bar moves, and batches stay the embedder's size


class FaissRetriever:
    """Inner-product retrieval over a fixed set of documents."""

    def __init__(self, embedder, texts: Sequence[str], doc_ids: Optional[Sequence[str]] = None,
                 nlist: Optional[int] = None, seed: int = 0, progress: bool = True):
        """progress: a bar on stderr while the corpus is embedded (shown on a terminal only)."""
        import faiss

        if len(texts) == 0:
            raise ValueError("texts must hold at least one document")
        if doc_ids is not None and len(doc_ids) != len(texts):
            raise ValueError(f"doc_ids ({len(doc_ids)}) and texts ({len(texts)}) must have the same length")
        self.doc_ids = list(doc_ids) if doc_ids is not None else [str(i) for i in range(len(texts))]
        if len(set(self.doc_ids)) != len(self.doc_ids):
            raise ValueError("doc_ids must be unique")
        n = len(texts)
        self.nlist = int(nlist) if nlist is not None else max(1, int(round(np.sqrt(n))))
        if not 1 <= self.nlist <= n:
            raise ValueError(f"nlist must be in [1, {n}] (the number of documents), got {self.nlist}")
        self.embedder = embedder
        vectors = self._embed_corpus(list(texts), progress)
        self.dim = vectors.shape[1]
        self.flat = faiss.IndexFlatIP(self.dim)
        self.flat.add(vectors)
        self.quantizer = faiss.IndexFlatIP(self.dim)
        self.ivf = faiss.IndexIVFFlat(self.quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.ivf.cp.seed = seed
        self.ivf.cp.min_points_per_centroid = 1  # small corpora: train on what there is, quietly
        self.ivf.train(vectors)
        self.ivf.add(vectors)

    def _embed_corpus(self, texts: List[str], progress: bool) -> np.ndarray:
        from hyperrag.progress import bar

        parts = []
        with bar("embedding the corpus", len(texts), progress) as shown:
            for lo in range(0, len(texts), EMBED_CHUNK):
                parts.append(self._as_matrix(self.embedder.encode(texts[lo:lo + EMBED_CHUNK])))
                shown.advance(len(parts[-1]))
        return np.concatenate(parts)

    def _as_matrix(self, vectors) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))

    def _embed(self, query) -> np.ndarray:
        return self._as_matrix(self.embedder.encode([query]) if isinstance(query, str) else query)

    def _check_k(self, top_k: int) -> int:
        if not 1 <= top_k <= len(self.doc_ids):
            raise ValueError(f"top_k must be in [1, {len(self.doc_ids)}], got {top_k}")
        return int(top_k)

    def _result(self, scores, ids, nprobe, final=True) -> SearchResult:
        keep = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0]
        return SearchResult([self.doc_ids[i] for _, i in keep], [s for s, _ in keep], nprobe, final)

    def search_exact(self, query, top_k: int) -> SearchResult:
        """Exact nearest neighbours (flat inner-product scan)."""
        scores, ids = self.flat.search(self._embed(query), self._check_k(top_k))
        return self._result(scores[0], ids[0], 0)

    def search(self, query, top_k: int, nprobe: int = 1) -> SearchResult:
        """Plain IVF search probing the ``nprobe`` nearest lists."""
        import faiss

        top_k, nprobe = self._check_k(top_k), self._check_nprobe(nprobe)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        scores, ids = self.ivf.search(self._embed(query), top_k, params=params)
        return self._result(scores[0], ids[0], nprobe)

    def _check_nprobe(self, nprobe: int) -> int:
        if not 1 <= nprobe <= self.nlist:
            raise ValueError(f"nprobe must be in [1, nlist={self.nlist}], got {nprobe}")
        return int(nprobe)

    def _scan_lists(self, x, top_k, lists, centroid_scores):
        """Top-k of one query over the given IVF lists only.

        The Python wrapper of search_preassigned reads the width from the shared
        index.nprobe; per-call SearchParametersIVF keeps concurrent searches apart.
        """
        import faiss

        lists = np.ascontiguousarray(lists, dtype=np.int64)
        centroid_scores = np.ascontiguousarray(centroid_scores, dtype=np.float32)
        scores = np.empty((1, top_k), dtype=np.float32)
        ids = np.empty((1, top_k), dtype=np.int64)
        params = faiss.SearchParametersIVF(nprobe=lists.shape[1])
        self.ivf.search_preassigned_c(1, faiss.swig_ptr(x), top_k, faiss.swig_ptr(lists),
                                      faiss.swig_ptr(centroid_scores), faiss.swig_ptr(scores),
                                      faiss.swig_ptr(ids), False, params)
        return scores, ids

    def search_staged(self, query, top_k: int, stages: Sequence[int] = (1, 2, 4, 8)) -> Iterator[SearchResult]:
        """Yield the top-k after probing stages[0], stages[1], ... lists (strictly increasing).

        Stages beyond nlist are clipped to nlist. The last yielded result has
        final=True and equals search(query, top_k, nprobe=its nprobe).
        """
        top_k = self._check_k(top_k)
        stages = [int(s) for s in stages]
        if not stages or stages[0] < 1 or any(a >= b for a, b in zip(stages, stages[1:])):
            raise ValueError(f"stages must be a non-empty, strictly increasing list of positive ints, got {stages}")
        schedule = sorted({min(s, self.nlist) for s in stages})
        x = self._embed(query)
        centroid_scores, lists = self.quantizer.search(x, schedule[-1])
        best_scores = np.full(0, -np.inf, dtype=np.float32)
        best_ids = np.full(0, -1, dtype=np.int64)
        done = 0
        for i, nprobe in enumerate(schedule):
            scores, ids = self._scan_lists(x, top_k, lists[:, done:nprobe], centroid_scores[:, done:nprobe])
            done = nprobe
            merged_scores = np.concatenate([best_scores, scores[0]])
            merged_ids = np.concatenate([best_ids, ids[0]])
            # Stable sort by descending score: on ties the earlier (nearer-list) hit wins, as in FAISS's own merge.
            order = np.argsort(-merged_scores, kind="stable")[:top_k]
            best_scores, best_ids = merged_scores[order], merged_ids[order]
            yield self._result(best_scores, best_ids, nprobe, final=i == len(schedule) - 1)
