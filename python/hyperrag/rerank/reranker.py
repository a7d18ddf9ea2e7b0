"""KVReuseReranker: a decoder LLM as a pointwise relevance judge that reuses document KV.

Relevance of a candidate = logit(yes) - logit(no) (float32) after the prompt of
hyperrag.rerank.rerank_format. In the document-first layout the
[instruction][document] half depends only on the document, so its KV is
computed once, stored as a node of the path [instruction, document] in a
rerank namespace of a SegmentStore (memory tiers, optional shared directory,
optional int8 compression), and every later query prefills only
[question][judge] on top of it.

All candidates of a query are scored in batched forwards (``max_batch`` at a
time): candidate b's cached KV is left-padded into one past tensor, its new
tokens are right-aligned after it, positions continue from its own cached
length, and an explicit mask keeps each row to its own valid keys (padding
rows see only themselves, so no row is fully masked). Candidates whose KV is
not cached are prefilled in full in their own batch, their document KV copied
out and stored; a batch never mixes the two, so short rows are not padded to
a miss's length.

Thread-safety: forwards run one at a time (a lock); the store is thread-safe,
so several threads may score at once.
"""
from __future__ import annotations

import functools
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..cache.identity import document_key, model_namespace, token_fingerprint
from ..cache.kv_cache import StorageError
from ..cache.kv_codec import CodecError, KVShape
from ..cache.segment_store import SegmentStore
from ..cache.tree import UnknownNodeError
from ..engines.hf_models import cache_argument, dynamic_cache, load_causal_lm
from ..progress import bar as progress_bar
from .rerank_format import LAYOUTS, RerankFormat

INSTRUCTION_SEGMENT = "<rerank-instruction>"
DEFAULT_CAPACITIES = {"host": 2 << 30}
_DTYPES = ("bfloat16", "float16", "float32")
SCORINGS = ("yes_no", "query_likelihood")


@dataclass
class RerankStats:
    queries: int = 0
    candidates: int = 0
    reused: int = 0          # candidates scored on stored document KV
    computed: int = 0        # candidates whose document KV was computed (and stored when possible)
    forward_seconds: float = 0.0


@dataclass
class IndexReport:
    """What ``KVReuseReranker.index`` did."""

    documents: int
    computed: int                 # documents whose KV was computed now
    already_cached: int           # documents found in memory or read from the directory
    raw_bytes: int                # KV bytes of all the documents in the model's dtype
    stored_bytes: int             # bytes the memory tiers took for them (after the memory codec)
    disk_bytes: int               # bytes written to the directory now (after the disk codec)
    seconds: float
    failed: List[str] = field(default_factory=list)  # documents computed but not stored (no room, I/O error)

    def per_document(self) -> Dict[str, float]:
        """Mean bytes per document: raw and in memory over all of them, on disk over those computed now."""
        return {"raw_bytes": self.raw_bytes / max(self.documents, 1),
                "stored_bytes": self.stored_bytes / max(self.documents - len(self.failed), 1),
                "disk_bytes": self.disk_bytes / max(self.computed, 1)}


@dataclass
class _Row:
    """One candidate of a batched forward: its cached KV parts and its new tokens."""

    past: List = field(default_factory=list)   # tensors [layers, 2, heads, tokens, dim], in order
    new: List[int] = field(default_factory=list)
    extract: Optional[Tuple[int, int]] = None  # (start, length) inside `new` whose KV to copy out

    @property
    def past_tokens(self) -> int:
        return sum(int(t.shape[3]) for t in self.past)


class KVReuseReranker:
    """Scores (query, document) pairs with a causal LM; see the module docstring.

    layout: "document_first" (document KV reusable) or "query_first" (the
    conventional order, always computed in full). scoring: "yes_no" (the
    judgement above) or "query_likelihood" (mean log-probability of the
    question given the document, document_first only). reuse: whether
    document_first stores and reuses document KV (default True; False
    computes the same layout in full, for comparison). The store is a
    SegmentStore: pass one to share it, or ``capacities`` / ``directory`` /
    ``codecs`` to make one.
    """

    def __init__(self, model_path: str = "smollm2", *, dtype: str = "bfloat16", layout: str = "document_first",
                 reuse: Optional[bool] = None, store: Optional[SegmentStore] = None,
                 capacities: Optional[Mapping[str, int]] = None, directory=None,
                 codecs: Optional[Mapping[str, object]] = None, rerank_format: Optional[RerankFormat] = None,
                 yes_token_id: Optional[int] = None, no_token_id: Optional[int] = None, max_batch: int = 16,
                 scoring: str = "yes_no", device: str = "cpu"):
        import torch

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if reuse is None:
            reuse = layout == "document_first"
        if reuse and layout != "document_first":
            raise ValueError("reuse=True needs layout='document_first': query_first puts the question before "
                             "each document, so no document KV is reusable across queries")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if scoring == "query_likelihood" and layout != "document_first":
            raise ValueError("scoring='query_likelihood' needs layout='document_first' (the question must follow "
                             "the document)")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if rerank_format is not None and not isinstance(rerank_format, RerankFormat):
            raise ValueError(f"rerank_format must be a RerankFormat, got {type(rerank_format).__name__}")
        if store is not None and (capacities, directory, codecs) != (None, None, None):
            raise ValueError("give either store or capacities/directory/codecs, not both")
        self.torch = torch
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, device=device)
        self.model.set_attn_implementation("sdpa")  # explicit per-row masks: the stock kernel handles them
        self._cache_arg = cache_argument(self.model)
        self._decoder = self.model.get_decoder()  # hidden states: the judgement is read in float32 below
        cfg = self.model.config.get_text_config(decoder=True)
        self.shape = KVShape(cfg.num_hidden_layers, cfg.num_key_value_heads,
                             getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads, dtype)
        self.max_positions = cfg.max_position_embeddings
        self.layout, self.reuse, self.max_batch = layout, bool(reuse), max_batch
        self.device = torch.device(device)
        self.format = rerank_format or RerankFormat.for_tokenizer(self.tokenizer)
        self.yes_token_id = self._answer_token(yes_token_id, self.format.yes, "yes_token_id")
        self.no_token_id = self._answer_token(no_token_id, self.format.no, "no_token_id")
        head = self.model.get_output_embeddings()
        pair = [self.yes_token_id, self.no_token_id]
        self._judge_weight = head.weight[pair].detach().float()
        self._judge_bias = None if getattr(head, "bias", None) is None else head.bias[pair].detach().float()
        self.scoring = scoring
        # query_likelihood needs the whole vocabulary's logits, also in float32
        self._head_weight = head.weight.detach().float() if scoring == "query_likelihood" else None
        self.namespace = f"{model_namespace(self.model.name_or_path, dtype)}/rerank"
        self.store = store if store is not None else SegmentStore(
            capacities or DEFAULT_CAPACITIES, directory, codecs=codecs, kv_shape=self.shape)
        if self.store.kv_shape is not None and self.store.kv_shape != self.shape:
            raise ValueError(f"the store holds KV of shape {self.store.kv_shape}, this model's is {self.shape}")
        self._tokens = functools.lru_cache(maxsize=8192)(self._tokenize)  # thread-safe memo
        instruction = self._tokens("instruction", "")
        self._instruction_key = document_key(INSTRUCTION_SEGMENT, token_fingerprint(instruction))
        self._requests = itertools.count()
        self._lock = threading.Lock()
        self._stats = RerankStats()

    # ------------------------------------------------------------ public API
    def score(self, query: str, doc_ids: Sequence[str], doc_texts: Sequence[str]) -> np.ndarray:
        """Relevance of each candidate (float32, input order; higher is more relevant):
        logit(yes) - logit(no), or the question's mean log-probability (``scoring``)."""
        tail, docs = self._validate(query, doc_ids, doc_texts)
        if not docs:
            return np.zeros(0, dtype=np.float32)
        if not self.reuse:
            rows = [_Row(new=self._full_ids(tail, doc)) for doc in docs]
            scores, _ = self._batched(rows, self._scored(query))
            self._count(len(docs), reused=0, computed=len(docs))
            return scores
        return self._score_reusing(tail, list(doc_ids), docs, self._scored(query))

    def rerank(self, query: str, doc_ids: Sequence[str], doc_texts: Sequence[str],
               top_k: Optional[int] = None) -> List[Tuple[str, float]]:
        """(doc_id, score) best first; the ``top_k`` best when given."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        scores = self.score(query, doc_ids, doc_texts)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(doc_ids[i], float(scores[i])) for i in order[:top_k]]

    def index(self, doc_ids: Sequence[str], doc_texts: Sequence[str], progress: bool = False) -> IndexReport:
        """Make every document's document-first KV ready in memory: computed and stored
        (memory and directory) when it is nowhere yet, read from the directory when only
        there. With a memory budget smaller than the corpus, the earliest documents may be
        evicted from memory again; the directory keeps them all."""
        if not self.reuse:
            raise ValueError("index() needs a reranker with layout='document_first' and reuse=True")
        docs = self._documents(doc_ids, doc_texts, len(self._tokens("instruction", "")))
        start = time.perf_counter()
        rid = f"index-{next(self._requests)}"
        computed, cached, failed, stored = 0, 0, [], 0
        try:
            with progress_bar("rerank index", len(docs), progress) as bar:
                instruction = self._instruction(rid)
                disk_before = self.store.stats().saved_disk_bytes  # after the instruction: documents only
                for lo in range(0, len(docs), self.max_batch):
                    batch = range(lo, min(lo + self.max_batch, len(docs)))
                    todo = []
                    for i in batch:  # held per batch (released below), so a corpus larger than memory can cycle
                        held = self.store.acquire(f"{rid}/batch", self.namespace, *self._path(doc_ids[i], docs[i]))
                        if len(held) == 2:
                            cached += 1
                            stored += self.store.cache.node(held[1]).nbytes
                        else:
                            todo.append(i)
                    if todo:
                        _, kvs = self._batched([_Row(past=[instruction], new=docs[i], extract=(0, len(docs[i])))
                                                for i in todo])
                        for i, kv in zip(todo, kvs):
                            nbytes = self._save(doc_ids[i], docs[i], kv)
                            if nbytes:
                                stored += nbytes
                            else:
                                failed.append(doc_ids[i])
                        computed += len(todo)
                    self.store.release(f"{rid}/batch")
                    bar.advance(len(batch))
        finally:
            self.store.release(rid)
            self.store.release(f"{rid}/batch")
        return IndexReport(documents=len(docs), computed=computed, already_cached=cached,
                           raw_bytes=sum(map(len, docs)) * self.shape.token_bytes(), stored_bytes=stored,
                           disk_bytes=self.store.stats().saved_disk_bytes - disk_before,
                           seconds=time.perf_counter() - start, failed=failed)

    def stats(self) -> RerankStats:
        with self._lock:
            return RerankStats(**self._stats.__dict__)

    # --------------------------------------------------------------- reuse
    def _score_reusing(self, tail: List[int], doc_ids: List[str], docs: List[List[int]],
                       scored: Tuple[int, int]) -> np.ndarray:
        rid = f"rerank-{next(self._requests)}"
        scores = np.empty(len(docs), dtype=np.float32)
        try:
            instruction = self._instruction(rid)
            hits, misses = [], []
            for i, (doc_id, doc) in enumerate(zip(doc_ids, docs)):
                kv = self._stored(rid, doc_id, doc)
                (hits if kv is not None else misses).append((i, kv))
            if misses:
                rows = [_Row(past=[instruction], new=docs[i] + tail, extract=(0, len(docs[i]))) for i, _ in misses]
                miss_scores, kvs = self._batched(rows, scored)
                scores[[i for i, _ in misses]] = miss_scores
                for (i, _), kv in zip(misses, kvs):
                    self._save(doc_ids[i], docs[i], kv)
            if hits:
                hit_scores, _ = self._batched([_Row(past=[instruction, kv], new=tail) for _, kv in hits], scored)
                scores[[i for i, _ in hits]] = hit_scores
        finally:
            self.store.release(rid)  # every node this call held: the instruction and the documents
        self._count(len(docs), reused=len(hits), computed=len(misses))
        return scores

    def _path(self, doc_id: str, doc: List[int]) -> Tuple[List[str], List[int]]:
        """Keys and token counts of a document's node path: [instruction, document]."""
        return ([self._instruction_key, document_key(doc_id, token_fingerprint(doc))],
                [len(self._tokens("instruction", "")), len(doc)])

    def _stored(self, request_id: str, doc_id: str, doc: List[int]):
        """The document's stored KV (held for the request), or None when it must be computed."""
        held = self.store.acquire(request_id, self.namespace, *self._path(doc_id, doc))
        if len(held) < 2:
            return None
        try:
            return self._read(held[1], len(doc))
        except (StorageError, UnknownNodeError, CodecError):
            self.store.count_failure()  # recomputed below: a lost or corrupt node is never served
            return None

    def _read(self, node_id: int, tokens: int):
        """A held node's KV as [layers, 2, kv_heads, tokens, head_dim] (the store decodes its codec)."""
        return self.shape.tensor(self.store.read(node_id), tokens)

    def _instruction(self, request_id: str):
        """KV of the instruction segment, held for the request; computed and stored on first use."""
        ids = self._tokens("instruction", "")
        keys, tokens = [self._instruction_key], [len(ids)]
        held = self.store.acquire(request_id, self.namespace, keys, tokens)
        if held:
            try:
                return self._read(held[0], len(ids))
            except (StorageError, UnknownNodeError, CodecError):
                self.store.count_failure()
        _, (kv,) = self._batched([_Row(new=list(ids), extract=(0, len(ids)))])
        self.store.save(self.namespace, keys, tokens, {0: self._payload(kv)})
        self.store.acquire(request_id, self.namespace, keys, tokens)  # so documents can be stored below it
        return kv

    def _save(self, doc_id: str, doc: List[int], kv) -> int:
        """Store a document's KV below the instruction; the bytes its node takes in memory
        (0 when it could not be stored: no room, an I/O error)."""
        keys, tokens = self._path(doc_id, doc)
        self.store.save(self.namespace, keys, tokens, {1: self._payload(kv)})
        path = self.store.cache.peek(self.namespace, keys).node_ids  # stored now, or by another thread first
        return int(self.store.cache.node(path[1]).nbytes) if len(path) == 2 else 0

    def _payload(self, kv):
        return kv.contiguous().reshape(-1).view(self.torch.uint8).numpy()

    # ------------------------------------------------------------- forward
    def _batched(self, rows: List[_Row], scored: Tuple[int, int] = (0, 0)):
        """Scores and extracted KV of ``rows``, ``max_batch`` rows per forward. ``scored``:
        (question tokens, judge tokens) at the end of every row, for query_likelihood."""
        scores, kvs = [], []
        for lo in range(0, len(rows), self.max_batch):
            s, k = self._forward(rows[lo:lo + self.max_batch], scored)
            scores.append(s)
            kvs.extend(k)
        return np.concatenate(scores), kvs

    def _forward(self, rows: List[_Row], scored: Tuple[int, int]):
        torch = self.torch
        b = len(rows)
        past = [r.past_tokens for r in rows]
        new = [len(r.new) for r in rows]
        p_max, n_max = max(past), max(new)
        total = p_max + n_max
        sh = self.shape
        dtype = getattr(torch, sh.dtype)
        valid = torch.zeros(b, total, dtype=torch.bool)
        input_ids = torch.zeros(b, n_max, dtype=torch.long)
        positions = torch.zeros(b, n_max, dtype=torch.long)
        kv = torch.zeros(sh.num_layers, 2, b, sh.kv_heads, p_max, sh.head_dim, dtype=dtype) if p_max else None
        for j, row in enumerate(rows):
            at = p_max - past[j]
            valid[j, at:p_max] = True
            for part in row.past:
                n = int(part.shape[3])
                kv[:, :, j, :, at:at + n] = part
                at += n
            valid[j, total - new[j]:] = True
            input_ids[j, n_max - new[j]:] = torch.tensor(row.new, dtype=torch.long)
            positions[j, n_max - new[j]:] = torch.arange(past[j], past[j] + new[j])
        slots = torch.arange(total)
        query_slots = torch.arange(p_max, total)
        mask = valid[:, None, None, :] & (slots[None, :] <= query_slots[:, None])[None, None]
        mask[:, 0, torch.arange(n_max), query_slots] = True  # padding rows see themselves: never fully masked
        layers = [] if kv is None else [(kv[layer, 0], kv[layer, 1]) for layer in range(sh.num_layers)]
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            cache = dynamic_cache(self.model, layers)
            out = self._decoder(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), use_cache=True, **{self._cache_arg: cache})
            scores = self._score(out.last_hidden_state, input_ids, scored).cpu().numpy()
            extracted = []
            for j, row in enumerate(rows):
                if row.extract is None:
                    extracted.append(None)
                    continue
                s = total - new[j] + row.extract[0]
                span = slice(s, s + row.extract[1])
                extracted.append(torch.stack([torch.stack([layer.keys[j, :, span], layer.values[j, :, span]])
                                              for layer in cache.layers]).cpu())
            self._stats.forward_seconds += time.perf_counter() - start
        return scores.astype(np.float32), extracted

    def _score(self, hidden, input_ids, scored: Tuple[int, int]):
        """Each row's score from the new tokens' hidden states [rows, new, hidden], in float32.

        yes_no: logit(yes) - logit(no) at the last position. A bf16 LM head rounds
        logits of magnitude 8-16 to steps of 0.0625-0.125, which ties most
        candidates of a query; the two head rows in float32 do not.
        query_likelihood: mean log-probability of the question's tokens after the
        first (whose prediction sits in the cached part), judge excluded.
        """
        question, judge = scored
        if self.scoring == "yes_no" or question < 2:
            logits = hidden[:, -1].float() @ self._judge_weight.T
            if self._judge_bias is not None:
                logits = logits + self._judge_bias
            return logits[:, 0] - logits[:, 1]
        n = hidden.shape[1]
        start, end = n - question - judge, n - judge  # the question's slots in the new block
        logits = hidden[:, start:end - 1].float() @ self._head_weight.T
        targets = input_ids[:, start + 1:end].to(logits.device)
        return logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].mean(-1)

    # ---------------------------------------------------------- validation
    def _validate(self, query, doc_ids, doc_texts) -> Tuple[List[int], List[List[int]]]:
        """Token ids of the query tail and of each document; ValueError before any state changes."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty str, got {query!r}")
        tail = self._tokens("question", query) + self._tokens("judge", "")
        return tail, self._documents(doc_ids, doc_texts, len(self._tokens("instruction", "")) + len(tail))

    def _documents(self, doc_ids, doc_texts, fixed: int) -> List[List[int]]:
        """Token ids of each document, checked to fit the window beside ``fixed`` other tokens."""
        for name, values in (("doc_ids", doc_ids), ("doc_texts", doc_texts)):
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(f"{name} must be a sequence of str, got {type(values).__name__}")
        if len(doc_ids) != len(doc_texts):
            raise ValueError(f"doc_ids ({len(doc_ids)}) and doc_texts ({len(doc_texts)}) must have the same length")
        for name, values in (("doc_ids", doc_ids), ("doc_texts", doc_texts)):
            for i, value in enumerate(values):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{name}[{i}] must be a non-empty str, got {value!r}")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("doc_ids must be unique within one call")
        docs = [self._tokens("document", text) for text in doc_texts]
        for doc_id, doc in zip(doc_ids, docs):
            if fixed + len(doc) > self.max_positions:
                raise ValueError(f"document {doc_id!r} has {len(doc)} tokens; with the instruction and the query "
                                 f"({fixed} tokens) it exceeds the model's window of {self.max_positions}")
        return docs

    def _tokenize(self, part: str, text: str) -> List[int]:
        template = getattr(self.format, part)
        if part in ("document", "question"):
            template = template.format(text=text)
        return list(self.tokenizer(template, add_special_tokens=part == "instruction")["input_ids"])

    def _scored(self, query: str) -> Tuple[int, int]:
        return len(self._tokens("question", query)), len(self._tokens("judge", ""))

    def _full_ids(self, tail: List[int], doc: List[int]) -> List[int]:
        """The whole prompt of one candidate in this reranker's layout."""
        instruction = self._tokens("instruction", "")
        if self.layout == "document_first":
            return instruction + doc + tail
        judge = self._tokens("judge", "")
        question = tail[:len(tail) - len(judge)]
        return instruction + question + doc + judge

    def _answer_token(self, token_id: Optional[int], word: str, field_name: str) -> int:
        vocab = len(self.tokenizer)
        if token_id is not None:
            if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab:
                raise ValueError(f"{field_name} must be a token id in [0, {vocab}), got {token_id!r}")
            return token_id
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"the answer word {word!r} is {len(ids)} tokens for this tokenizer; pass {field_name}")
        return ids[0]

    def _count(self, candidates: int, reused: int, computed: int) -> None:
        with self._lock:
            self._stats.queries += 1
            self._stats.candidates += candidates
            self._stats.reused += reused
            self._stats.computed += computed

