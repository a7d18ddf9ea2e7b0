"""A Hugging Face transformers engine that prefills on top of cached segment KV.

The prompt is [system][d1]..[dk][question] (a ``PromptFormat`` turns texts
into these parts; callers with their own template pass token ids instead).
Each segment is tokenized on its own and the parts concatenated, so a
document's token ids never depend on its neighbours and the KV of segment i
depends only on the exact segments before it: the tree path of its node. The
system prompt is a segment like the documents, cached as the first node of
every path.

What is missing (every segment after the cached ones, and the question) is
prefilled in ONE forward pass, as a server without reuse would, so a miss
costs what no caching costs. ``chunked=True`` prefills each segment in its own
forward instead, which makes a segment's KV independent of what else was
missing (bit-exact reuse in bf16) at the cost of re-reading the weights per
segment. Without it, reuse is exact in float32 and within bf16's own
variation across forward shapes (see tests/test_exactness.py for the measured
tolerance).

Payload layout (one DocumentKV per segment): the segment's token span of
every layer, shape [layers, 2 (key, value), kv_heads, tokens, head_dim] in the
model's dtype, C-contiguous, viewed as uint8 (nbytes == kv_bytes(tokens)).
Keys are stored after rotary embedding, so a payload is only valid at the
position it was computed at: the tree path guarantees that.
"""
from __future__ import annotations

import threading
import time
import warnings
from typing import Optional, Sequence

import numpy as np

from ..cache.identity import model_namespace
from . import approximate_reuse
from .base import DocumentKV, Engine, GenerateResult, PrefillCancelled, PrefillRequest, PrefillResult, Prompt
from .hf_models import cache_argument, dynamic_cache
from .prompt_builder import DEFAULT_SYSTEM_PROMPT, PromptBuilder, PromptFormat

__all__ = ["DEFAULT_ATTENTION", "PromptFormat", "TransformersEngine"]

_DTYPES = ("bfloat16", "float16", "float32")
# Chosen by measurement (bench/bench_real_ttft.py, attention ablation): see bench/README.md.
DEFAULT_ATTENTION = "hyperrag_prefix"


class TransformersEngine(Engine):
    """Runs a causal LM (batch 1) on top of cached per-segment KV.

    Thread-safety: one forward pass at a time per engine (an internal lock);
    requests from several threads are serialized, never interleaved. Prompts are
    built (PromptBuilder, its own lock) beside a forward pass.
    """

    name = "transformers"
    decodes = True
    tokenizes = True
    approximates = True

    def __init__(
        self,
        model_path: str = "smollm2",
        dtype: str = "bfloat16",
        device: str = "cpu",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        attn_implementation: str = DEFAULT_ATTENTION,
        chunked: bool = False,
        prompt_format: Optional[PromptFormat] = None,
    ):
        import torch

        from . import prefix_attention
        from .hf_models import load_causal_lm

        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; use one of {_DTYPES}")
        prefix_attention.register()
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, device=device)
        try:
            self.model.set_attn_implementation(attn_implementation)
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"attn_implementation {attn_implementation!r} is not available: use "
                f"{prefix_attention.ATTENTION_NAME!r} (reuse-friendly), 'sdpa' or 'eager'"
            ) from err
        self.attn_implementation = attn_implementation
        self.chunked = bool(chunked)
        self.torch = torch
        self.dtype = dtype
        self.torch_dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        cfg = self.model.config.get_text_config(decoder=True)
        self.num_layers = cfg.num_hidden_layers
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_positions = cfg.max_position_embeddings
        self.max_context = self.max_positions
        self.prompts = PromptBuilder(self.tokenizer, prompt_format, system_prompt)  # the window: check_window
        self.system_prompt = system_prompt
        self._elem = torch.empty((), dtype=self.torch_dtype).element_size()
        self._cache_arg = cache_argument(self.model)
        self.model_id = model_namespace(self.model.name_or_path, dtype)
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- sizes
    def namespace(self, system_prompt: str = "") -> str:
        """Model weights + dtype. The system prompt is not part of it: it is the first
        segment of every path, so prompts with different system prompts share nothing."""
        return self.model_id

    def kv_bytes(self, tokens: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self._elem * int(tokens)

    # ------------------------------------------------------------ tokenizing
    @property
    def format(self) -> PromptFormat:
        return self.prompts.format

    def document_ids(self, text: str) -> list:
        """Token ids of one document part, as it stands in the prompt."""
        return self.prompts.document_ids(text)

    def system_ids(self, system_prompt: str = "") -> list:
        return self.prompts.system_ids(system_prompt)

    def question_ids(self, question: str) -> list:
        return self.prompts.question_ids(question)

    def count_tokens(self, text: str) -> int:
        """Tokens a document occupies in the prompt: use it for doc_tokens."""
        return len(self.document_ids(text))

    def prompt(self, doc_ids, doc_tokens=None, doc_texts=None, doc_token_ids=None, question="", question_ids=None,
               system_prompt="", output_tokens=0) -> Prompt:
        """[system][documents][question] as token ids (see PromptBuilder.prompt), checked
        against this engine's context window."""
        prompt = self.prompts.prompt(doc_ids, doc_tokens, doc_texts, doc_token_ids, question, question_ids,
                                     system_prompt)
        self.check_window(prompt, output_tokens)
        return prompt

    # ------------------------------------------------------------- prefill
    def prefill(self, request: PrefillRequest, *, chunked: Optional[bool] = None) -> PrefillResult:
        """Prefill the missing segments and the question on top of request.cached
        (chunked: default the engine's; see the module docstring)."""
        return self._run(request, 1, chunked).prefill

    def generate(self, request: PrefillRequest, max_new_tokens: int = 16, *,
                 chunked: Optional[bool] = None) -> GenerateResult:
        """Prefill like ``prefill`` then decode greedily; always ``max_new_tokens`` tokens (no EOS stop)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        return self._run(request, max_new_tokens, chunked)

    def _run(self, request: PrefillRequest, max_new_tokens: int, chunked: Optional[bool]) -> GenerateResult:
        chunked = self.chunked if chunked is None else chunked
        prompt = self._validate(request, max_new_tokens)
        torch = self.torch
        recomputed = 0
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            if request.reuse is None:
                cache, logits, load_seconds, pending = self._prefill_exact(request, prompt, chunked)
            else:
                cache, logits, load_seconds, pending, recomputed = approximate_reuse.prefill(
                    self, request, prompt, request.reuse)
            first = int(torch.argmax(logits))
            seconds = time.perf_counter() - start
            top = []
            if request.top_logits:
                values, ids = torch.topk(logits, min(int(request.top_logits), logits.numel()))
                top = [(int(i), float(v)) for i, v in zip(ids, values)]
            tokens = [first]
            decode_start = time.perf_counter()
            next_id = first
            for _ in range(max_new_tokens - 1):
                self._check_cancelled(request)
                step = self.model(input_ids=torch.tensor([[next_id]], device=self.device), use_cache=True,
                                  **{self._cache_arg: cache})
                next_id = int(torch.argmax(step.logits[0, -1]))
                tokens.append(next_id)
            decode_seconds = time.perf_counter() - decode_start
            extract_start = time.perf_counter()
            new_kv = [extract() for extract in pending]
            extract_seconds = time.perf_counter() - extract_start
        result = PrefillResult(seconds=seconds, new_kv=new_kv, question_tokens=len(prompt.question_ids),
                               first_token_id=first, logits=logits.cpu().numpy(), load_seconds=load_seconds,
                               top_logits=top, extract_seconds=extract_seconds, recomputed_tokens=recomputed)
        return GenerateResult(prefill=result, token_ids=tokens, decode_seconds=decode_seconds)

    def _prefill_exact(self, request: PrefillRequest, prompt: Prompt, chunked: bool):
        """The cached prefix, then what is missing and the question (see the module docstring).
        Returns (cache, first-token logits, load seconds, extractors of the new segments' KV)."""
        torch = self.torch
        m = len(request.cached)
        missing = list(prompt.token_ids[m:])
        question = list(prompt.question_ids)
        chunks = [*missing, question] if chunked else [[t for part in missing for t in part] + question]
        start = time.perf_counter()
        cache = self._assemble(request.cached)
        load_seconds = time.perf_counter() - start
        for chunk in chunks:
            self._check_cancelled(request)
            input_ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
        spans = []
        offset = sum(prompt.segment_tokens[:m])
        for seg_id, n in zip(prompt.segment_ids[m:], prompt.segment_tokens[m:]):
            spans.append(lambda seg_id=seg_id, offset=offset, n=n: self._extract(cache, seg_id, offset, n))
            offset += n
        return cache, out.logits[0, -1].float(), load_seconds, spans

    @staticmethod
    def _check_cancelled(request: PrefillRequest) -> None:
        if request.cancelled is not None and request.cancelled():
            raise PrefillCancelled(f"prefill of {list(request.prompt.segment_ids)} cancelled")

    # ---------------------------------------------------------- validation
    def _validate(self, request: PrefillRequest, max_new_tokens: int) -> Prompt:
        """Check everything before any compute."""
        prompt = request.prompt
        if request.namespace != self.namespace():
            raise ValueError(f"namespace {request.namespace!r} does not match this engine (expected "
                             f"{self.namespace()!r}); build it with engine.namespace()")
        if prompt.token_ids is None or prompt.question_ids is None:
            raise ValueError("the prompt carries no token ids; build it with this engine's prompt()")
        if len(request.cached) > len(prompt.segment_ids):
            raise ValueError(f"cached has {len(request.cached)} entries but the prompt has only "
                             f"{len(prompt.segment_ids)} segments")
        segments = self._cached_segments(request)
        for j, (i, kv) in enumerate(zip(segments, request.cached)):
            self._check_cached(j, kv, i, prompt.segment_ids[i], prompt.segment_tokens[i])
        if prompt.tokens + max_new_tokens - 1 > self.max_positions:  # the last token is sampled, never fed back
            raise ValueError(
                f"prompt of {prompt.tokens} tokens (segments {list(prompt.segment_tokens)}, question "
                f"{prompt.question_tokens}) plus {max_new_tokens} new tokens exceeds the model's context window "
                f"max_position_embeddings={self.max_positions}")
        return prompt

    def _cached_segments(self, request: PrefillRequest) -> list:
        """The segment index of each cached entry: a prefix for exact reuse, any increasing
        subset with approximate reuse."""
        n, given = len(request.cached), request.cached_segments
        if request.reuse is None:
            if given is not None and list(given) != list(range(n)):
                raise ValueError(f"cached_segments {list(given)} is not the prefix 0..{n - 1}: scattered segments "
                                 "need reuse=ApproximateReuse(...)")
            return list(range(n))
        if not isinstance(request.reuse, approximate_reuse.ApproximateReuse):
            raise ValueError(f"reuse must be an ApproximateReuse or None, got {type(request.reuse).__name__}")
        request.reuse.check(self.num_layers)
        given = list(range(n)) if given is None else list(given)
        segments = len(request.prompt.segment_ids)
        if len(given) != n or any(isinstance(i, bool) or not isinstance(i, int) for i in given) or \
                any(not 0 <= i < segments for i in given) or sorted(set(given)) != given:
            raise ValueError(f"cached_segments must be {n} increasing segment indices in 0..{segments - 1} "
                             f"(one per cached entry), got {given}")
        if request.prompt.fixed and given and given[0] != 0:
            raise ValueError("position-independent document KV is relative to the system prompt: with cached "
                             "documents, cached_segments must start with 0 (the system prompt)")
        return given

    def _check_cached(self, i: int, kv: DocumentKV, segment: int, segment_id: str, tokens: int) -> None:
        if kv.doc_id != segment_id:
            raise ValueError(f"cached[{i}].doc_id is {kv.doc_id!r} but segment {segment} is {segment_id!r}")
        if kv.tokens != tokens:
            raise ValueError(f"cached[{i}].tokens is {kv.tokens} but segment {segment_id!r} has {tokens} tokens")
        payload = kv.payload
        if not isinstance(payload, np.ndarray):
            raise ValueError(f"cached[{i}].payload must be a numpy uint8 array, got {type(payload).__name__}")
        if payload.dtype != np.uint8:
            raise ValueError(f"cached[{i}].payload has dtype {payload.dtype}; expected uint8 (the raw KV bytes)")
        want = self.kv_bytes(tokens)
        if payload.nbytes != want:
            raise ValueError(
                f"cached[{i}].payload has {payload.nbytes} bytes; expected {want} = kv_bytes({tokens}) "
                f"for {self.model_id}"
            )

    # ---------------------------------------------------------- KV plumbing
    def _payload_tensor(self, kv: DocumentKV):
        """Zero-copy view of a payload as [layers, 2, kv_heads, tokens, head_dim]."""
        array = np.ascontiguousarray(kv.payload).reshape(-1)
        with warnings.catch_warnings():
            # Payloads may be read-only views of cache blocks; they are only read here.
            warnings.simplefilter("ignore", UserWarning)
            raw = self.torch.from_numpy(array)
        return raw.view(self.torch_dtype).view(self.num_layers, 2, self.num_kv_heads, kv.tokens, self.head_dim)

    def _assemble(self, cached: Sequence[DocumentKV]):
        """A DynamicCache holding the cached segments (one concatenation per layer)."""
        if not cached:
            return dynamic_cache(self.model)
        torch = self.torch
        parts = [self._payload_tensor(kv).to(self.device) for kv in cached]
        layers = [(torch.cat([p[layer, 0].unsqueeze(0) for p in parts], dim=2),
                   torch.cat([p[layer, 1].unsqueeze(0) for p in parts], dim=2)) for layer in range(self.num_layers)]
        return dynamic_cache(self.model, layers)

    def _extract(self, cache, segment_id: str, start: int, tokens: int) -> DocumentKV:
        """Copy one segment's span of every layer into a fresh payload."""
        torch = self.torch
        out = torch.empty((self.num_layers, 2, self.num_kv_heads, tokens, self.head_dim), dtype=self.torch_dtype)
        for i, layer in enumerate(cache.layers):
            out[i, 0].copy_(layer.keys[0, :, start:start + tokens])
            out[i, 1].copy_(layer.values[0, :, start:start + tokens])
        payload = out.view(-1).view(torch.uint8).numpy()
        return DocumentKV(doc_id=segment_id, tokens=tokens, nbytes=payload.nbytes, payload=payload)
