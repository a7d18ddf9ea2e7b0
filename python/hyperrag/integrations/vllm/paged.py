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
through that writer, reads gather by the learned positions. Token t of a
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
    """Where vLLM's CPU cache writer puts each (token offset, dim) of a block-head region."""

    def __init__(self, isa: str, dtype: torch.dtype, block_size: int, head_dim: int):
        self.isa, self.dtype, self.block_size, self.head_dim = isa, dtype, block_size, head_dim
        self.key_index, self.value_index = self._learn()

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

    def write(self, kv_layer: torch.Tensor, where: Tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor,
              values: torch.Tensor) -> None:
        """Put keys/values [kv_heads, tokens, head_dim] at the (block, offset) slots ``where``."""
        blocks, offsets = where
        _write(self.isa, kv_layer, blocks * self.block_size + offsets, keys.permute(1, 0, 2).to(self.dtype),
               values.permute(1, 0, 2).to(self.dtype))

    def read(self, kv_layer: torch.Tensor, where: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """keys, values [kv_heads, tokens, head_dim] at the slots ``where`` (copies)."""
        blocks, offsets = where
        out = []
        for region, index in zip(_regions(kv_layer), (self.key_index, self.value_index)):
            flat = region.reshape(region.shape[0], region.shape[1], -1)[blocks]  # [tokens, heads, bs * dim]
            positions = index[offsets].unsqueeze(1).expand(-1, flat.shape[1], -1)  # [tokens, heads, dim]
            out.append(torch.gather(flat, 2, positions).permute(1, 0, 2))
        return out[0], out[1]


@lru_cache(maxsize=None)
def layout_for(isa: str, dtype: torch.dtype, block_size: int, head_dim: int) -> PagedLayout:
    return PagedLayout(isa, dtype, block_size, head_dim)
