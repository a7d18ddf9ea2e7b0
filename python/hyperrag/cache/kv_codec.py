"""KV payload codecs: raw bytes, or int8 with float32 scales.

A payload is one segment's KV in the engines' layout, [layers, 2 (key, value),
kv_heads, tokens, head_dim] in the model's dtype, as uint8 bytes (see
hyperrag.engines.transformers_engine). ``RawCodec`` stores it as is.
``Int8Codec`` stores each element as a symmetric int8 (x ~ q * scale, scale =
absmax / 127 over a group) and one float32 scale per group:

- ``"channel"``: one scale per (layer, head, head_dim channel) over the tokens.
  Keys carry a few channels of much larger magnitude than the rest (RoPE pairs
  and known outlier channels), so a per-channel scale keeps the small channels'
  resolution; it costs 4 bytes per channel, whatever the length.
- ``"token"``: one scale per (layer, head, token) over head_dim. Values have no
  such channels but vary from token to token.

The default (keys per channel, values per token) was chosen by measurement on
SmolLM2 reranker scores (bench/bench_rerank.py, "int8 granularity"); it takes
0.5 + 2 / head_dim + 2 / tokens of the bf16 bytes (0.53x at head_dim 64 and
250 tokens).

An int8 payload is self-describing (magic, version, dtype, scale granularity,
shape), so a reader never needs to know how it was written, and a payload of
another format is refused. Codecs are pure functions: thread-safe.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np

MAGIC = b"HRQ8"
VERSION = 1
GRANULARITIES = ("channel", "token")
DTYPES = ("bfloat16", "float16", "float32")
_HEADER = struct.Struct("<4sHBBBxxxIIII")  # magic, version, dtype, key, value granularity, L, H, T, D


class CodecError(ValueError):
    """A payload is not what the codec expects (wrong size, not an int8 payload, another version)."""


@dataclass(frozen=True)
class KVShape:
    """What one token of a model's KV looks like: enough to read a raw payload."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: str  # one of DTYPES

    def __post_init__(self):
        for name in ("num_layers", "kv_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KVShape.{name} must be an int >= 1, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"KVShape.dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def elem_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def token_bytes(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.elem_bytes

    def tokens_of(self, raw_nbytes: int) -> int:
        """Tokens held by a raw payload of ``raw_nbytes``; CodecError when it is not whole tokens."""
        tokens, rest = divmod(int(raw_nbytes), self.token_bytes())
        if rest or tokens < 1:
            raise CodecError(f"a raw payload of {raw_nbytes} bytes is not a whole number of tokens "
                             f"({self.token_bytes()} bytes each for {self})")
        return tokens

    def tensor(self, raw, tokens: int):
        """Zero-copy torch view [layers, 2, kv_heads, tokens, head_dim] of raw payload bytes."""
        import torch

        if isinstance(raw, torch.Tensor):
            flat = raw.reshape(-1)
        else:
            with warnings.catch_warnings():  # read-only cache blocks: only ever read through this view
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(memoryview(np.ascontiguousarray(raw)).cast("B"), dtype=torch.uint8)
        return flat.view(getattr(torch, self.dtype)).view(self.num_layers, 2, self.kv_heads, tokens, self.head_dim)


class RawCodec:
    """The payload as the engine wrote it."""

    name = "raw"

    def encode(self, raw, shape: KVShape) -> np.ndarray:
        return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)

    def decode(self, stored, shape: KVShape) -> np.ndarray:
        return np.frombuffer(memoryview(stored).cast("B"), dtype=np.uint8)

    def decode_tensor(self, stored, shape: KVShape):
        """[layers, 2, kv_heads, tokens, head_dim] in the model's dtype (a view of ``stored``)."""
        return shape.tensor(stored, shape.tokens_of(memoryview(stored).nbytes))


class Int8Codec:
    """Symmetric int8 with float32 scales per ``key_scales`` / ``value_scales`` group."""

    def __init__(self, key_scales: str = "channel", value_scales: str = "token"):
        for field, value in (("key_scales", key_scales), ("value_scales", value_scales)):
            if value not in GRANULARITIES:
                raise ValueError(f"{field} must be one of {GRANULARITIES}, got {value!r}")
        self.key_scales, self.value_scales = key_scales, value_scales
        self.name = "int8" if (key_scales, value_scales) == ("channel", "token") else \
            f"int8-k{key_scales}-v{value_scales}"

    @staticmethod
    def _reduced_dim(granularity: str) -> int:
        # In [layers, heads, tokens, head_dim]: a per-channel scale spans the tokens, a per-token one the channels.
        return 2 if granularity == "channel" else 3

    def encode(self, raw, shape: KVShape) -> np.ndarray:
        import torch

        tokens = shape.tokens_of(memoryview(raw).nbytes)
        kv = shape.tensor(raw, tokens).float()
        parts, scales = [], []
        for index, granularity in ((0, self.key_scales), (1, self.value_scales)):
            x = kv[:, index]
            scale = x.abs().amax(dim=self._reduced_dim(granularity), keepdim=True) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
            parts.append(torch.round(x / scale).clamp_(-127, 127).to(torch.int8))
            scales.append(scale.reshape(-1))
        header = _HEADER.pack(MAGIC, VERSION, DTYPES.index(shape.dtype), GRANULARITIES.index(self.key_scales),
                              GRANULARITIES.index(self.value_scales), shape.num_layers, shape.kv_heads, tokens,
                              shape.head_dim)
        body = torch.stack(parts, dim=1).contiguous()  # [layers, 2, heads, tokens, head_dim]
        return np.concatenate([np.frombuffer(header, np.uint8),
                               torch.cat(scales).numpy().view(np.uint8),
                               body.view(torch.uint8).reshape(-1).numpy()])

    def decode_tensor(self, stored, shape: KVShape):
        """[layers, 2, kv_heads, tokens, head_dim] in the dtype the payload was written in."""
        import torch

        data = np.frombuffer(memoryview(stored).cast("B"), dtype=np.uint8)
        if data.nbytes < _HEADER.size:
            raise CodecError(f"an int8 KV payload of {data.nbytes} bytes is shorter than its header")
        magic, version, dtype, kg, vg, layers, heads, tokens, dim = _HEADER.unpack_from(data.tobytes()[:_HEADER.size])
        if magic != MAGIC or version != VERSION:
            raise CodecError(f"not an int8 KV payload of version {VERSION} (magic {magic!r}, version {version})")
        if (layers, heads, dim, DTYPES[dtype]) != (shape.num_layers, shape.kv_heads, shape.head_dim, shape.dtype):
            raise CodecError(f"int8 payload of shape L{layers} H{heads} D{dim} {DTYPES[dtype]} does not match {shape}")
        granularity = (GRANULARITIES[kg], GRANULARITIES[vg])
        sizes = [layers * heads * (dim if g == "channel" else tokens) for g in granularity]
        body_at = _HEADER.size + 4 * sum(sizes)
        if data.nbytes != body_at + 2 * layers * heads * tokens * dim:
            raise CodecError(f"int8 KV payload is {data.nbytes} bytes; its header says "
                             f"{body_at + 2 * layers * heads * tokens * dim}")
        scales = torch.from_numpy(data[_HEADER.size:body_at].copy().view(np.float32))
        body = torch.from_numpy(data[body_at:].copy().view(np.int8)).view(layers, 2, heads, tokens, dim)
        out = torch.empty((layers, 2, heads, tokens, dim), dtype=getattr(torch, shape.dtype))
        offset = 0
        for index, g in enumerate(granularity):
            scale = scales[offset:offset + sizes[index]]
            offset += sizes[index]
            scale = scale.view(layers, heads, 1, dim) if g == "channel" else scale.view(layers, heads, tokens, 1)
            out[:, index] = body[:, index].float() * scale
        return out

    def decode(self, stored, shape: KVShape) -> np.ndarray:
        import torch

        return self.decode_tensor(stored, shape).reshape(-1).view(torch.uint8).numpy()


Codec = Union[RawCodec, Int8Codec]


def make_codec(spec: Union[str, Codec, None]) -> Codec:
    """A codec from its name: "raw" (or None), "int8", or "int8-k<channel|token>-v<channel|token>"."""
    if isinstance(spec, (RawCodec, Int8Codec)):
        return spec
    if spec is None or spec == "raw":
        return RawCodec()
    if spec == "int8":
        return Int8Codec()
    if isinstance(spec, str) and spec.startswith("int8-k") and "-v" in spec:
        key, value = spec[len("int8-k"):].split("-v", 1)
        if key in GRANULARITIES and value in GRANULARITIES:
            return Int8Codec(key, value)
    raise ValueError(f"codec must be 'raw', 'int8' or 'int8-k<channel|token>-v<channel|token>', got {spec!r}")
