"""LLM architecture presets: the numbers the cost model and the KV cache need.

Every preset carries the published architecture of the real checkpoint (its
Hugging Face config.json). ``num_params`` is the checkpoint's parameter count;
for all presets it equals :meth:`LLMModel.architecture_params`, which tests check.

All presets use a gated MLP (gate, up and down projections: SwiGLU or GeGLU),
so one formula covers their matmul parameters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar, Dict, Optional


def _positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class LLMModel:
    """A decoder-only transformer described by its architecture.

    Fields follow config.json names: ``num_layers`` (num_hidden_layers),
    ``num_heads`` (query heads), ``num_kv_heads`` (key/value heads, GQA),
    ``head_dim``, ``hidden_size``, ``intermediate_size`` (MLP width),
    ``vocab_size``, ``num_params`` (total parameters, embeddings included),
    ``tie_embeddings`` (the LM head shares the input embedding),
    ``qkv_bias`` (Q/K/V projections have biases, as in Qwen 2.5),
    ``max_context`` (the context window in tokens, as published for the
    model: prompt plus output must fit in it).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_params: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_context: int = 131072

    # The 17 presets, assigned below the class.
    LLAMA_3_2_1B: ClassVar["LLMModel"]
    LLAMA_3_2_3B: ClassVar["LLMModel"]
    LLAMA_3_1_8B: ClassVar["LLMModel"]
    LLAMA_3_1_70B: ClassVar["LLMModel"]
    LLAMA_3_1_405B: ClassVar["LLMModel"]
    MISTRAL_7B: ClassVar["LLMModel"]
    MISTRAL_NEMO_12B: ClassVar["LLMModel"]
    GEMMA_2_2B: ClassVar["LLMModel"]
    GEMMA_2_9B: ClassVar["LLMModel"]
    GEMMA_2_27B: ClassVar["LLMModel"]
    QWEN_2_5_7B: ClassVar["LLMModel"]
    QWEN_2_5_14B: ClassVar["LLMModel"]
    QWEN_2_5_72B: ClassVar["LLMModel"]
    DEEPSEEK_R1_DISTILL_QWEN_7B: ClassVar["LLMModel"]
    DEEPSEEK_R1_DISTILL_LLAMA_70B: ClassVar["LLMModel"]
    PHI_3_MINI: ClassVar["LLMModel"]
    PHI_3_MEDIUM: ClassVar["LLMModel"]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for f in fields(self):
            if f.type in ("int", int):
                _positive_int(f.name, getattr(self, f.name))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    # ---- sizes -------------------------------------------------------------
    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache bytes per token: 2 (K and V) x layers x kv_heads x head_dim x dtype bytes."""
        _positive_int("dtype_bytes", dtype_bytes)
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        """Bytes of all weights: num_params x dtype bytes."""
        _positive_int("dtype_bytes", dtype_bytes)
        return self.num_params * dtype_bytes

    @property
    def matmul_params_per_layer(self) -> int:
        """Weights one token multiplies through in one layer (biases and norms excluded):
        Q and O projections (hidden x heads x head_dim each), K and V (hidden x
        kv_heads x head_dim each) and the gated MLP (3 x hidden x intermediate)."""
        h, d = self.hidden_size, self.head_dim
        attn = 2 * h * self.num_heads * d + 2 * h * self.num_kv_heads * d
        return attn + 3 * h * self.intermediate_size

    def architecture_params(self) -> int:
        """Total parameters implied by the architecture: embeddings (x2 when the
        LM head is untied), matmul weights, Q/K/V biases, the norms of each
        layer (4 per layer for Gemma 2, which has pre- and post-norms, else 2)
        and the final norm."""
        h = self.hidden_size
        norms = 4 if self.name.startswith("gemma-2") else 2
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        per_layer = self.matmul_params_per_layer + bias + norms * h
        embed = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return embed + self.num_layers * per_layer + h

    # ---- FLOPs -------------------------------------------------------------
    def linear_flops(self, tokens: int, logits_tokens: int = 1) -> int:
        """Matmul FLOPs of ``tokens`` tokens through all layers (2 FLOPs per
        multiply-add) plus the LM head for ``logits_tokens`` tokens:
        2 x tokens x layers x matmul_params_per_layer + 2 x logits_tokens x hidden x vocab."""
        return 2 * tokens * self.num_layers * self.matmul_params_per_layer + 2 * logits_tokens * self.hidden_size * self.vocab_size

    def attention_flops(self, new_tokens: int, cached_tokens: int = 0) -> int:
        """Score (QK^T) and value (AV) FLOPs of causal attention when
        ``new_tokens`` follow ``cached_tokens``: the i-th new token (1-based)
        attends to cached + i keys, and each key costs 4 x heads x head_dim
        FLOPs per layer. Sum: 4 x layers x heads x head_dim x (n x c + n(n+1)/2)."""
        n, c = new_tokens, cached_tokens
        keys = n * c + n * (n + 1) // 2
        return 4 * self.num_layers * self.num_heads * self.head_dim * keys

    def prefill_flops(self, new_tokens: int, cached_tokens: int = 0) -> int:
        """FLOPs to prefill ``new_tokens`` on top of ``cached_tokens`` of cached KV
        and produce the first token's logits: linear_flops + attention_flops."""
        return self.linear_flops(new_tokens) + self.attention_flops(new_tokens, cached_tokens)

    # ---- construction --------------------------------------------------------
    @classmethod
    def custom(
        cls,
        name: str,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: Optional[int] = None,
        head_dim: Optional[int] = None,
        intermediate_size: Optional[int] = None,
        vocab_size: int = 32000,
        num_params: Optional[int] = None,
        tie_embeddings: bool = False,
        qkv_bias: bool = False,
        max_context: int = 131072,
    ) -> "LLMModel":
        """A model that is not a preset. Defaults: num_kv_heads = num_heads (no
        GQA), head_dim = hidden_size / num_heads, intermediate_size = 4 x
        hidden_size (rounded), num_params from the architecture, a 128k-token
        context window. Raises ValueError naming the offending field."""
        _positive_int("num_heads", num_heads)
        _positive_int("hidden_size", hidden_size)
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(
                    f"head_dim must be given when hidden_size ({hidden_size}) is not a multiple of num_heads ({num_heads})"
                )
            head_dim = hidden_size // num_heads
        model = cls(
            name=name,
            num_layers=num_layers,
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_kv_heads=num_heads if num_kv_heads is None else num_kv_heads,
            head_dim=head_dim,
            intermediate_size=4 * hidden_size if intermediate_size is None else intermediate_size,
            vocab_size=vocab_size,
            num_params=1,  # placeholder, replaced below once the architecture is validated
            tie_embeddings=tie_embeddings,
            qkv_bias=qkv_bias,
            max_context=max_context,
        )
        params = model.architecture_params() if num_params is None else num_params
        return cls(**{**model.__dict__, "num_params": params})

    @classmethod
    def from_hf_config(cls, config, name: Optional[str] = None) -> "LLMModel":
        """Build from a transformers PretrainedConfig (LLaMA-style field names)."""
        heads = config.num_attention_heads
        return cls.custom(
            name=name or getattr(config, "name_or_path", "") or config.model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=bool(getattr(config, "attention_bias", False)),
            max_context=int(getattr(config, "max_position_embeddings", None) or 131072),
        )

    @classmethod
    def presets(cls) -> Dict[str, "LLMModel"]:
        """The 17 presets by canonical name."""
        return dict(_PRESETS)

    @classmethod
    def from_name(cls, name: "str | LLMModel") -> "LLMModel":
        """Look up a preset by name, case- and separator-insensitive:
        "llama-3.1-8b", "LLAMA_3_1_8B", "Llama 3.1 8B" all work. An LLMModel
        is returned unchanged. Raises ValueError listing the allowed names."""
        if isinstance(name, LLMModel):
            return name
        if not isinstance(name, str):
            raise ValueError(f"model must be an LLMModel or a preset name, got {type(name).__name__}")
        model = _LOOKUP.get(_normalize(name))
        if model is None:
            raise ValueError(f"model {name!r} is not a preset; allowed: {', '.join(_PRESETS)}")
        return model


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# (attribute, canonical name, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, params, tied, qkv_bias,
#  context window: the published one; Qwen 2.5 without YaRN scaling, Phi-3 in its 4k editions)
_TABLE = [
    ("LLAMA_3_2_1B", "llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 1_235_814_400, True, False, 131072),
    ("LLAMA_3_2_3B", "llama-3.2-3b", 28, 3072, 24, 8, 128, 8192, 128256, 3_212_749_824, True, False, 131072),
    ("LLAMA_3_1_8B", "llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, False, False, 131072),
    ("LLAMA_3_1_70B", "llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, 70_553_706_496, False, False, 131072),
    ("LLAMA_3_1_405B", "llama-3.1-405b", 126, 16384, 128, 8, 128, 53248, 128256, 405_853_388_800, False, False,
     131072),
    ("MISTRAL_7B", "mistral-7b", 32, 4096, 32, 8, 128, 14336, 32768, 7_248_023_552, False, False, 32768),
    ("MISTRAL_NEMO_12B", "mistral-nemo-12b", 40, 5120, 32, 8, 128, 14336, 131072, 12_247_782_400, False, False,
     131072),
    ("GEMMA_2_2B", "gemma-2-2b", 26, 2304, 8, 4, 256, 9216, 256000, 2_614_341_888, True, False, 8192),
    ("GEMMA_2_9B", "gemma-2-9b", 42, 3584, 16, 8, 256, 14336, 256000, 9_241_705_984, True, False, 8192),
    ("GEMMA_2_27B", "gemma-2-27b", 46, 4608, 32, 16, 128, 36864, 256000, 27_227_128_320, True, False, 8192),
    ("QWEN_2_5_7B", "qwen-2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, 7_615_616_512, False, True, 32768),
    ("QWEN_2_5_14B", "qwen-2.5-14b", 48, 5120, 40, 8, 128, 13824, 152064, 14_770_033_664, False, True, 32768),
    ("QWEN_2_5_72B", "qwen-2.5-72b", 80, 8192, 64, 8, 128, 29568, 152064, 72_706_203_648, False, True, 32768),
    # The distills keep their base architectures (Qwen2.5-Math-7B, Llama-3.3-70B).
    ("DEEPSEEK_R1_DISTILL_QWEN_7B", "deepseek-r1-distill-qwen-7b", 28, 3584, 28, 4, 128, 18944, 152064,
     7_615_616_512, False, True, 131072),
    ("DEEPSEEK_R1_DISTILL_LLAMA_70B", "deepseek-r1-distill-llama-70b", 80, 8192, 64, 8, 128, 28672, 128256,
     70_553_706_496, False, False, 131072),
    ("PHI_3_MINI", "phi-3-mini", 32, 3072, 32, 32, 96, 8192, 32064, 3_821_079_552, False, False, 4096),
    ("PHI_3_MEDIUM", "phi-3-medium", 40, 5120, 40, 10, 128, 17920, 32064, 13_960_238_080, False, False, 4096),
]

_PRESETS: Dict[str, LLMModel] = {}
_LOOKUP: Dict[str, LLMModel] = {}
for _attr, _name, *_arch, _tied, _bias, _context in _TABLE:
    _model = LLMModel(_name, *_arch, tie_embeddings=_tied, qkv_bias=_bias, max_context=_context)
    setattr(LLMModel, _attr, _model)
    _PRESETS[_name] = _model
    _LOOKUP[_normalize(_name)] = _model
    _LOOKUP[_normalize(_attr)] = _model
# Llama 3.3 70B has the 3.1 architecture; parameter-size suffixes are common spellings.
_LOOKUP[_normalize("llama-3.3-70b")] = LLMModel.LLAMA_3_1_70B
_LOOKUP[_normalize("phi-3-mini-3.8b")] = LLMModel.PHI_3_MINI
_LOOKUP[_normalize("phi-3-medium-14b")] = LLMModel.PHI_3_MEDIUM
