"""Copies between HyperRAG's segment payloads and vLLM's paged KV blocks (CPU attention backend).

A payload (one segment, as the transformers engine writes it) is
[layers, 2 (key, value), kv_heads, tokens, head_dim] in the model's dtype.
vLLM's CPU attention keeps each layer as [blocks, kv_heads, block_size,
2 * head_dim]: per block and head, a key region then a value region of
block_size * head_dim elements each. Inside a region the order depends on
the kernel's instruction set: values are row-major, keys are transposed for
the vector kernels and tiled in pairs for AMX. Rather than copy that
knowledge, ``PagedLayout`` learns where each (token, dim) lands from vLLM's
own cache writer, once per (isa, dtype, block size, head dim): writes go
through that writer, reads are strided views of the learned tiling. Token t of a
request lives in block block_ids[t // block_size] at offset t % block_size.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Tuple

import torch

_EXACT = 256  # integers below this are exact in bfloat16: positions are learned in base-256 digits


def slots(block_ids: Sequence[int], start: int, end: int, block_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(block, offset) of each token position in [start, end)."""
    positions = torch.arange(start, end)
    table = torch.as_tensor(list(block_ids), dtype=torch.long)
    return table[positions // block_size], positions % block_size


def _regions(kv_layer: torch.Tensor):
    """(key region, value region) views of a layer, each [blocks, kv_heads, block_size, head_dim]."""
    blocks, heads, block_size, width = kv_layer.shape
    return kv_layer.view(blocks, heads, 2 * block_size, width // 2).chunk(2, dim=2)


def _write(isa: str, kv_layer: torch.Tensor, slot_mapping: torch.Tensor, keys: torch.Tensor,
           values: torch.Tensor) -> None:
    from vllm import _custom_ops as ops

    key_cache, value_cache = _regions(kv_layer)
    ops.cpu_attn_reshape_and_cache(keys.contiguous(), values.contiguous(), key_cache, value_cache, slot_mapping, isa)


class PagedLayout:
    """Where vLLM's CPU cache writer puts each (token offset, dim) of a block-head region.

    Every layout the CPU kernels use is a tiling: splitting the token offset o and the
    dim k as (o // p, o % p) and (k // q, k % q), an element's position in its region is
    a sum of those four parts times fixed strides (row-major: p = q = 1; keys transposed;
    AMX pairs). Learning p, q and the strides lets reads be strided views, not gathers."""

    def __init__(self, isa: str, dtype: torch.dtype, block_size: int, head_dim: int):
        self.isa, self.dtype, self.block_size, self.head_dim = isa, dtype, block_size, head_dim
        self.key_tiling, self.value_tiling = (self._tiling(index) for index in self._learn())

    def _learn(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """[block_size, head_dim] flat positions of keys and of values in their regions."""
        bs, d = self.block_size, self.head_dim
        index = torch.arange(bs * d)
        found = []
        for digit in (index % _EXACT, index // _EXACT):
            scratch = torch.zeros(1, 1, bs, 2 * d, dtype=self.dtype)
            pattern = digit.view(bs, 1, d).to(self.dtype)
            _write(self.isa, scratch, torch.arange(bs), pattern, pattern)
            found.append([region.reshape(-1).to(torch.long) for region in _regions(scratch)])
        layout = []
        for low, high in zip(*found):  # keys, then values
            where = torch.empty(bs * d, dtype=torch.long)
            where[low + _EXACT * high] = torch.arange(bs * d)
            layout.append(where.view(bs, d))
        return layout[0], layout[1]

    def _tiling(self, index: torch.Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """(sizes, strides) of the region as [bs // p, p, d // q, q] reproducing ``index``."""
        bs, d = self.block_size, self.head_dim
        o, k = torch.arange(bs).view(bs, 1), torch.arange(d).view(1, d)
        splits = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= max(bs, d)]
        for p in (n for n in splits if bs % n == 0):
            for q in (n for n in splits if d % n == 0):
                strides = (int(index[p, 0]) if p < bs else 0, int(index[1, 0]) if p > 1 else 0,
                           int(index[0, q]) if q < d else 0, int(index[0, 1]) if q > 1 else 0)
                tiled = (o // p) * strides[0] + (o % p) * strides[1] + (k // q) * strides[2] + (k % q) * strides[3]
                if torch.equal(tiled, index):
                    return (bs // p, p, d // q, q), strides
        raise NotImplementedError(f"vLLM's CPU KV layout for isa {self.isa!r} ({self.dtype}, block size {bs}, "
                                  f"head dim {d}) is not a tiling the HyperRAG connector can read")

    def write(self, kv_layer: torch.Tensor, block_ids: Sequence[int], start: int, keys: torch.Tensor,
              values: torch.Tensor) -> None:
        """Put keys/values [kv_heads, tokens, head_dim] at a request's token positions from ``start``."""
        blocks, offsets = slots(block_ids, start, start + keys.shape[1], self.block_size)
        _write(self.isa, kv_layer, blocks * self.block_size + offsets, keys.permute(1, 0, 2).to(self.dtype),
               values.permute(1, 0, 2).to(self.dtype))

    def read(self, kv_layer: torch.Tensor, block_ids: Sequence[int], start: int,
             end: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """keys, values [kv_heads, end - start, head_dim] of a request's token positions [start, end)
        (token t in block block_ids[t // block_size]); copies."""
        bs = self.block_size
        blocks = torch.as_tensor(list(block_ids[start // bs:(end - 1) // bs + 1]), dtype=torch.long)
        first = start - start % bs
        out = []
        for region_offset, (sizes, strides) in ((0, self.key_tiling), (bs * self.head_dim, self.value_tiling)):
            tiled = kv_layer.as_strided((kv_layer.shape[0], kv_layer.shape[1]) + sizes,
                                        kv_layer.stride()[:2] + strides, kv_layer.storage_offset() + region_offset)
            spans = tiled.index_select(0, blocks).permute(1, 0, 2, 3, 4, 5)  # [heads, blocks, bs // p, p, d // q, q]
            tokens = spans.reshape(kv_layer.shape[1], len(blocks) * bs, self.head_dim)
            out.append(tokens[:, start - first:end - first])
        return out[0], out[1]


@lru_cache(maxsize=None)
def layout_for(isa: str, dtype: torch.dtype, block_size: int, head_dim: int) -> PagedLayout:
    return PagedLayout(isa, dtype, block_size, head_dim)
