"""The baseline users run today: a token-level prefix cache, as in vLLM's and SGLang's servers.

A radix tree over token ids (SGLang's design): each edge holds a run of tokens
and their KV; a prompt reuses the KV of its longest cached token prefix,
whatever the tokens are (system prompt, documents, even the question on an
exact repeat), and computes the rest in one forward. After each prompt its
whole KV is inserted (shared prefixes stored once). Eviction: least recently
used leaves first, whole edges, until the bytes held fit the capacity.

It runs the same model through the same TransformersEngine attention path as
HyperRAG, so the two differ only in what they reuse. Not thread-safe (one
benchmark thread drives it).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from hyperrag.engines.hf_models import dynamic_cache


@dataclass(eq=False)
class _Edge:
    tokens: List[int]
    keys: list = field(default_factory=list)    # per layer [kv_heads, len(tokens), head_dim]
    values: list = field(default_factory=list)
    children: Dict[int, "_Edge"] = field(default_factory=dict)
    parent: Optional["_Edge"] = None
    last_use: int = 0


@dataclass
class PrefixResult:
    ttft_s: float
    cached_tokens: int
    first_token_id: int
    logits: object


class TokenPrefixCache:
    """Longest-token-prefix KV reuse with LRU eviction under ``capacity_bytes``."""

    def __init__(self, engine, capacity_bytes: int):
        self.engine = engine
        self.capacity = int(capacity_bytes)
        self.root = _Edge([])
        self.bytes = 0
        self._clock = itertools.count(1)

    def _edge_bytes(self, edge: _Edge) -> int:
        return self.engine.kv_bytes(len(edge.tokens))

    def _match(self, ids: List[int]):
        """(edges along the longest cached prefix, tokens matched); the last edge may match partly."""
        edges, node, i = [], self.root, 0
        while i < len(ids) and ids[i] in node.children:
            edge = node.children[ids[i]]
            n = 0
            while n < len(edge.tokens) and i + n < len(ids) and edge.tokens[n] == ids[i + n]:
                n += 1
            edges.append((edge, n))
            i += n
            if n < len(edge.tokens):
                break
            node = edge
        return edges, i

    def prefill(self, ids: List[int]) -> PrefixResult:
        """First token of ``ids`` reusing the longest cached prefix; then store the prompt's KV."""
        engine, torch_ = self.engine, torch
        start = time.perf_counter()
        edges, cached = self._match(ids)
        if cached == len(ids):  # a repeat: recompute the last token for its logits
            cached -= 1
            edges = self._trim(edges, cached)
        with engine._lock, torch_.inference_mode():
            layers = []
            for layer in range(engine.num_layers):
                k = [e.keys[layer][:, :n] for e, n in edges]
                v = [e.values[layer][:, :n] for e, n in edges]
                layers.append((torch_.cat(k, dim=1).unsqueeze(0), torch_.cat(v, dim=1).unsqueeze(0)) if k else None)
            cache = dynamic_cache(engine.model, layers if edges else ())
            out = engine.model(input_ids=torch_.tensor([ids[cached:]]), use_cache=True, logits_to_keep=1,
                               **{engine._cache_arg: cache})
            logits = out.logits[0, -1].float()
            first = int(torch_.argmax(logits))
            ttft = time.perf_counter() - start
            full = [(layer.keys[0], layer.values[0]) for layer in cache.layers]
        self._insert(ids, full)
        return PrefixResult(ttft, cached, first, logits.numpy())

    @staticmethod
    def _trim(edges, length):
        out, total = [], 0
        for edge, n in edges:
            take = min(n, length - total)
            if take <= 0:
                break
            out.append((edge, take))
            total += take
        return out

    def _insert(self, ids: List[int], kv) -> None:
        node, i, now = self.root, 0, next(self._clock)
        while i < len(ids):
            edge = node.children.get(ids[i])
            if edge is None:
                new = _Edge(list(ids[i:]), [k[:, i:].clone() for k, _ in kv], [v[:, i:].clone() for _, v in kv],
                            parent=node, last_use=now)
                node.children[ids[i]] = new
                self.bytes += self._edge_bytes(new)
                break
            n = 0
            while n < len(edge.tokens) and i + n < len(ids) and edge.tokens[n] == ids[i + n]:
                n += 1
            if n < len(edge.tokens):
                self._split(edge, n)
            edge.last_use = now
            node, i = edge, i + n
        self._evict()

    def _split(self, edge: _Edge, n: int) -> None:
        """Cut an edge after n tokens: the tail becomes its only child (bytes unchanged)."""
        # Copies, not views: evicting one part must free its memory.
        tail = _Edge(edge.tokens[n:], [k[:, n:].clone() for k in edge.keys], [v[:, n:].clone() for v in edge.values],
                     edge.children, edge, edge.last_use)
        for child in tail.children.values():
            child.parent = tail
        edge.tokens, edge.keys, edge.values = edge.tokens[:n], [k[:, :n].clone() for k in edge.keys], \
            [v[:, :n].clone() for v in edge.values]
        edge.children = {tail.tokens[0]: tail}

    def _evict(self) -> None:
        while self.bytes > self.capacity:
            leaves = [e for e in self._edges() if not e.children]
            victim = min(leaves, key=lambda e: e.last_use)
            del victim.parent.children[victim.tokens[0]]
            self.bytes -= self._edge_bytes(victim)

    def _edges(self):
        stack = list(self.root.children.values())
        while stack:
            e = stack.pop()
            yield e
            stack.extend(e.children.values())
