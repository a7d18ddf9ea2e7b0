"""Moving cached keys to other positions: RoPE is a rotation, so shifting is exact.

A key at position p is R(p) k, where R rotates each pair of channels by p times
that pair's frequency. Rotations are orthogonal, so a segment's cached keys
computed at offset A become the keys at offset B by R(B) R(A)^T; values carry
no position and stay as they are. What a
shift cannot restore is attention to other tokens: a segment computed with
nothing before it, moved behind other documents, still lacks their influence
(the business of selective recompute, not of this module).

Supported: models whose rotary embedding rotates the two halves of the head
dimension (``rotate_half``: Llama, Mistral, Qwen2/3, SmolLM2 and most current
decoders) over the full head dimension. Others raise NotImplementedError
naming the model type, never a silently wrong rotation.
"""
from __future__ import annotations

HALF_ROTATION_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")


def rotary_embedding(model):
    """The model's rotary embedding module (cos/sin for given position ids)."""
    model_type = getattr(model.config, "model_type", "?")
    rotary = getattr(model.get_decoder(), "rotary_emb", None)
    if model_type not in HALF_ROTATION_TYPES or rotary is None:
        raise NotImplementedError(
            f"shifting cached keys is implemented for half-rotation RoPE models {HALF_ROTATION_TYPES}; "
            f"this model is {model_type!r}")
    return rotary


def _rotation(rotary, positions, head_dim: int, device):
    """The model's own cos/sin tables at ``positions`` (float64 copies), without attention scaling."""
    import torch

    probe = torch.zeros(1, 1, head_dim, dtype=torch.float32, device=device)
    cos, sin = rotary(probe, positions[None].to(device))
    if cos.shape[-1] != head_dim:
        raise NotImplementedError(f"partial rotary embeddings ({cos.shape[-1]} of {head_dim} channels) are not "
                                  "supported")
    # The module folds an attention scaling into cos/sin (1.0 for plain RoPE); a pure rotation has none.
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return cos[0].double() / scale, sin[0].double() / scale


def shift_keys(model, kv, from_offset: int, to_offset: int):
    """``kv`` [layers, 2, kv_heads, tokens, head_dim] computed at positions from_offset ..,
    as computed at to_offset .. (keys rotated, values unchanged); a new tensor in kv's dtype.

    The rotation back by the model's own float32 tables at the old positions and forward
    by its tables at the new ones is combined in float64, so the result matches what the
    model computes at the new positions, including the rounding of its tables at large
    positions (a rotation by the difference of the angles would not).
    """
    import torch

    for name, value in (("from_offset", from_offset), ("to_offset", to_offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 (a position), got {value!r}")
    steps = torch.arange(kv.shape[-2])
    out = kv.clone()
    out[:, 0] = rerotate_keys(model, kv[:, 0], from_offset + steps, to_offset + steps)
    return out


def rerotate_keys(model, keys, from_positions, to_positions):
    """Keys [..., tokens, head_dim] rotated for ``from_positions`` (one per token), rotated
    for ``to_positions`` instead; a new tensor in keys' dtype (see shift_keys).

    R(b) R(a)^T is one rotation per channel pair; its cos/sin come from the model's own
    tables at a and b, combined in float64, so only one float32 pass touches the keys.
    """
    import torch

    rotary = rotary_embedding(model)
    head_dim = keys.shape[-1]
    cos_a, sin_a = _rotation(rotary, from_positions, head_dim, keys.device)
    cos_b, sin_b = _rotation(rotary, to_positions, head_dim, keys.device)
    work = torch.promote_types(keys.dtype, torch.float32)
    cos = (cos_b * cos_a + sin_b * sin_a).to(work)  # cos(b - a)
    sin = (sin_b * cos_a - cos_b * sin_a).to(work)  # sin(b - a)
    wide = keys.to(work)
    return (wide * cos + _rotate_half(wide) * sin).to(keys.dtype)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
