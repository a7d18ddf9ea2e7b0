"""Approximate reuse: a document's KV reused at any position, with selective recompute.

Exact reuse serves a document's KV only behind the same ordered documents (its
tree path), which a stream of fresh questions rarely repeats. Here each
document's KV is kept in one position-independent form: computed right after
the system prompt, at offset = the system prompt's tokens. That form is also the
exact KV of the tree path [system, document], so exact and approximate reuse
share those nodes. A prompt [system][d1]..[dk][question] is then served as:

1. documents without that form get it, packed into one forward pass in which
   each sees the system prompt and itself;
2. every document's keys are re-rotated to its place in this prompt (RoPE is a
   rotation: rope_shift, exact); values carry no position;
3. what re-rotation cannot restore is attention between documents. d1 needs
   none (its form is exact at its place). Of d2..dk, ``budget`` (a share of
   their tokens) is recomputed, the tokens chosen by ``policy``:
     none       nothing (budget 0): pure reuse
     first_k    the first tokens of each document, which draw most attention
                (the EPIC / LegoLink observation)
     deviation  the tokens whose layer-``probe_layer`` KV differ most from a
                true prefill of this prompt (CacheBlend's selection); the probe
                runs layers 0..probe_layer over the documents, and its exact KV
                of those layers replaces the reused KV there
4. the chosen tokens (and the missing documents) run at their positions, each
   attending to every key at or before its position (a recomputed token's fresh
   copy, never its stale one); the fresh KV replaces the reused KV for the
   decode that follows. A run of recomputed tokens that reaches the question is
   prefilled plainly with it; the scattered ones before it take an explicit
   mask (with the question in the same pass when nothing else follows).

Nothing approximate is ever stored: only the position-independent forms (and a
newly computed system prompt), which are exact.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

RECOMPUTE_POLICIES = ("none", "first_k", "deviation")
REUSE_MODES = ("exact", "approximate")


@dataclass(frozen=True)
class ApproximateReuse:
    """How a request reuses documents away from their exact path (see the module docstring).

    budget: the share of the re-positioned documents' tokens (all but the first
    document) to recompute, in [0, 1]; 0 with policy "none", > 0 otherwise.
    probe_layer: for "deviation", the layer whose KV deviation ranks the tokens.
    """

    policy: str = "first_k"
    budget: float = 0.15
    probe_layer: int = 1

    def __post_init__(self):
        if self.policy not in RECOMPUTE_POLICIES:
            raise ValueError(f"recompute policy {self.policy!r} is unknown; allowed: {', '.join(RECOMPUTE_POLICIES)}")
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget <= 1.0:
            raise ValueError(f"recompute budget must be a number in [0, 1] (a share of tokens), got {budget!r}")
        if (self.policy == "none") != (budget == 0):
            raise ValueError(f"recompute budget {budget!r} does not fit policy {self.policy!r}: policy 'none' "
                             "takes budget 0 and the other policies a budget > 0")
        probe = self.probe_layer
        if isinstance(probe, bool) or not isinstance(probe, int) or probe < 0:
            raise ValueError(f"probe_layer must be an int >= 0 (a layer index), got {probe!r}")

    def check(self, num_layers: int) -> None:
        """ValueError when these settings do not fit a model of ``num_layers`` layers."""
        if self.policy == "deviation" and self.probe_layer >= num_layers - 1:
            raise ValueError(f"probe_layer {self.probe_layer} leaves no layer to recompute: this model has "
                             f"{num_layers} layers (use 0..{num_layers - 2})")

    def tokens(self, approximated: int) -> int:
        """How many of ``approximated`` tokens the budget recomputes."""
        return min(approximated, math.ceil(self.budget * approximated - 1e-9))


def first_tokens(spans, budget: float):
    """first_k: the first ceil(budget * length) positions of each (start, length) span."""
    out = []
    for start, length in spans:
        out.extend(range(start, start + min(length, math.ceil(budget * length - 1e-9))))
    return out


class _ProbeDone(Exception):
    """Raised by the probe hook once the probed layers have run."""


def prefill(engine, request, prompt, reuse: ApproximateReuse):
    """Serve ``request`` (cached: position-independent forms of the segments
    ``request.cached_segments``) as the module docstring says. Returns (cache ready for
    decode, first-token logits, seconds spent reading cached payloads, callables giving
    the DocumentKV form of each segment not cached, cached tokens recomputed).
    The callables run after the first token: the forms they give are what the cache
    stores. The caller holds the engine's lock and inference mode."""
    import time

    import torch

    from .hf_models import dynamic_cache
    from .rope_shift import rerotate_keys

    model, device = engine.model, engine.device
    segments = range(len(prompt.segment_ids))
    given = request.cached_segments
    load_start = time.perf_counter()
    forms = {i: engine._payload_tensor(kv).to(device)
             for i, kv in zip(range(len(request.cached)) if given is None else given, request.cached)}
    load_seconds = time.perf_counter() - load_start
    lengths = [int(t) for t in prompt.segment_tokens]
    starts = [sum(lengths[:i]) for i in segments]
    total, fixed = sum(lengths), prompt.fixed
    offset = lengths[0] if fixed else 0  # where every position-independent form starts
    missing = [i for i in segments if i not in forms]
    moved = [i for i in segments[fixed + 1:] if i in forms]  # reused away from the offset they were computed at

    def run(ids, positions, cache, mask=None):
        return model(input_ids=torch.tensor([ids], dtype=torch.long, device=device),
                     position_ids=torch.tensor([list(positions)], dtype=torch.long, device=device),
                     attention_mask=mask, use_cache=True, logits_to_keep=1, **{engine._cache_arg: cache})

    def cache_of(kv):  # [layers, 2, heads, tokens, dim] -> a DynamicCache holding it
        return dynamic_cache(model, [(kv[layer, 0][None], kv[layer, 1][None]) for layer in range(engine.num_layers)])

    # The context: each cached segment where the prompt puts it (keys re-rotated); a
    # missing segment is a placeholder that the mask hides until it is computed.
    shape = (engine.num_layers, 2, engine.num_kv_heads)
    context = torch.cat([forms[i] if i in forms else torch.zeros(*shape, lengths[i], engine.head_dim,
                                                                 dtype=engine.torch_dtype, device=device)
                         for i in segments], dim=3) if total else None
    for i in moved:
        span = slice(starts[i], starts[i] + lengths[i])
        context[:, 0, :, span] = rerotate_keys(model, context[:, 0, :, span], torch.arange(offset, offset + lengths[i]),
                                               torch.arange(starts[i], starts[i] + lengths[i]))

    # Which reused tokens to recompute (missing segments are computed whole).
    chosen = []
    if reuse.policy == "first_k":
        chosen = first_tokens([(starts[i], lengths[i]) for i in moved], reuse.budget)
    elif reuse.policy == "deviation" and moved:
        movable = torch.zeros(total, dtype=torch.bool)
        for i in moved:
            movable[starts[i]:starts[i] + lengths[i]] = True
        chosen = _deviating_tokens(engine, prompt, context, offset, movable, reuse, cache_of(forms[0]) if fixed
                                   else dynamic_cache(model), run)
    recompute = sorted(set(chosen).union(*(range(starts[i], starts[i] + lengths[i]) for i in missing)))
    # A recomputed run that reaches the end of the context is a plain prefill on top of
    # the rest; only the scattered tokens before it need an explicit mask.
    suffix = total
    while recompute and recompute[-1] == suffix - 1:
        recompute.pop()
        suffix -= 1
    all_ids = [t for segment in prompt.token_ids for t in segment]
    layers = [] if suffix == 0 else [(context[layer, 0, :, :suffix][None], context[layer, 1, :, :suffix][None])
                                     for layer in range(engine.num_layers)]
    cache = dynamic_cache(model, layers)
    tail = all_ids[suffix:] + list(prompt.question_ids)  # plain prefill after the scattered tokens
    tail_positions = list(range(suffix, total + len(prompt.question_ids)))
    merged = bool(recompute) and suffix == total  # only the question follows: one pass with the mask
    if recompute:
        n = len(recompute)
        positions = recompute + (tail_positions if merged else [])
        query_pos = torch.tensor(positions, device=device)
        stale = torch.zeros(suffix, dtype=torch.bool, device=device)
        stale[query_pos[:n]] = True
        old = (torch.arange(suffix, device=device)[None, :] <= query_pos[:, None]) & ~stale[None, :]
        mask = torch.cat([old, query_pos[None, :] <= query_pos[:, None]], dim=1)[None, None]
        out = run([all_ids[p] for p in recompute] + (tail if merged else []), positions, cache, mask)
        layers = []
        for layer in cache.layers:  # in place: the fresh KV over the stale copies, then the question's KV
            kept = layer.keys.shape[2] - n
            for kv in (layer.keys, layer.values):
                fresh, after = kv[:, :, suffix:suffix + n].clone(), kv[:, :, suffix + n:].clone()
                kv[:, :, query_pos[:n]] = fresh
                kv[:, :, suffix:kept] = after
            layers.append((layer.keys[:, :, :kept], layer.values[:, :, :kept]))
        cache = dynamic_cache(model, layers)
    if not merged:
        out = run(tail, tail_positions, cache)

    # The forms to store: the system prompt and the first document are exact where they
    # stand; a later document is computed again on the system prompt alone, after the
    # first token.
    def form(i):
        segment_id = prompt.segment_ids[i]
        if i <= fixed:
            return lambda: engine._extract(cache, segment_id, starts[i], lengths[i])

        def alone():  # the system prompt's KV as it stands (exact); the model never writes into it
            doc = dynamic_cache(model, [(layer.keys[:, :, :offset], layer.values[:, :, :offset])
                                        for layer in cache.layers] if fixed else ())
            run(list(prompt.token_ids[i]), range(offset, offset + lengths[i]), doc)
            return engine._extract(doc, segment_id, offset, lengths[i])
        return alone

    pending = [form(i) for i in missing]
    return cache, out.logits[0, -1].float(), load_seconds, pending, len(chosen)


def _deviating_tokens(engine, prompt, context, offset, movable, reuse, cache, run):
    """CacheBlend's selection: of the ``movable`` positions, those whose KV at
    ``reuse.probe_layer`` differ most from a true prefill of the documents. The probe's
    exact KV of layers 0..probe_layer is written into ``context`` (every document)."""
    import torch

    probe = reuse.probe_layer
    total = context.shape[3]
    owner = threading.get_ident()

    def stop(module, args):
        if threading.get_ident() == owner:
            raise _ProbeDone

    hook = engine.model.get_decoder().layers[probe + 1].register_forward_pre_hook(stop)
    try:
        run([t for segment in prompt.token_ids[prompt.fixed:] for t in segment], range(offset, total), cache)
    except _ProbeDone:
        pass
    finally:
        hook.remove()
    fresh = torch.stack([torch.stack([layer.keys[0, :, offset:], layer.values[0, :, offset:]])
                         for layer in cache.layers[:probe + 1]])
    deviation = (fresh[probe].float() - context[probe, :, :, offset:].float()).pow(2).sum(dim=(0, 1, 3))
    context[:probe + 1, :, :, offset:] = fresh
    candidates = torch.nonzero(movable[offset:]).flatten()
    count = reuse.tokens(len(candidates))
    if not count:
        return []
    best = torch.topk(deviation[candidates.to(deviation.device)], count).indices.cpu()
    return (candidates[best] + offset).tolist()
