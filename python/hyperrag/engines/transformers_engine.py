"""A Hugging Face transformers engine with exact document-level KV reuse.

The prompt is [system][d1]..[dk][question], each part tokenized on its own and
concatenated, so a document's token ids never depend on its neighbours and
the KV of document i depends only on the exact prefix [system][d1..d(i-1)],
which is the tree path of its node.

Payload layout (one DocumentKV per document): the document's token span of
every layer, shape [layers, 2 (key, value), kv_heads, tokens, head_dim] in the
model's dtype, C-contiguous, viewed as uint8 (nbytes == kv_bytes(tokens)).
Keys are stored after rotary embedding, so a payload is only valid at the
position it was computed at: the tree path guarantees that.

The system prompt's KV is not a tree node: the engine computes it once per
namespace and keeps the last few in memory (it is short and shared by every
request of the namespace). request.cached therefore covers documents only.
"""
from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..cache.identity import token_fingerprint
from .base import DocumentKV, Engine, GenerateResult, PrefillCancelled, PrefillRequest, PrefillResult

_DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class PromptFormat:
    """Templates of the three prompt parts; each holds one ``{text}``."""

    system: str
    document: str
    question: str

    @staticmethod
    def for_tokenizer(tokenizer) -> "PromptFormat":
        """ChatML when the tokenizer knows its markers (SmolLM2), plain text otherwise."""
        if "<|im_start|>" in tokenizer.get_vocab():
            return PromptFormat(
                system="<|im_start|>system\n{text}<|im_end|>\n<|im_start|>user\n",
                document="Document: {text}\n\n",
                question="Question: {text}<|im_end|>\n<|im_start|>assistant\n",
            )
        return PromptFormat(system="{text}\n\n", document="Document: {text}\n\n", question="Question: {text}\nAnswer:")


class TransformersEngine(Engine):
    """Runs a causal LM (batch 1) on top of cached per-document KV.

    Thread-safety: one forward pass at a time per engine (an internal lock);
    requests from several threads are serialized, never interleaved. The
    tokenization memo has its own lock, so checks run beside a forward pass.
    """

    name = "transformers"
    decodes = True
    tokenizes = True

    def __init__(
        self,
        model_path: str = "smollm2",
        dtype: str = "bfloat16",
        device: str = "cpu",
        system_prompt: str = "You are a helpful assistant. Answer the question using the documents.",
        attn_implementation: str = "hyperrag_prefix",
        chunked: bool = True,
        max_system_prompts: int = 8,
    ):
        import torch

        from . import prefix_attention
        from .hf_models import load_causal_lm

        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; use one of {_DTYPES}")
        if max_system_prompts < 1:
            raise ValueError(f"max_system_prompts must be >= 1, got {max_system_prompts}")
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
        self.system_prompt = system_prompt
        self.format = PromptFormat.for_tokenizer(self.tokenizer)
        cfg = self.model.config.get_text_config(decoder=True)
        self.num_layers = cfg.num_hidden_layers
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_positions = cfg.max_position_embeddings
        self.max_context = self.max_positions
        self._elem = torch.empty((), dtype=self.torch_dtype).element_size()
        resolved = Path(self.model.name_or_path).resolve()
        self.model_id = f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}-{dtype}"
        self._lock = threading.Lock()
        self._memo_lock = threading.Lock()
        self._max_system = max_system_prompts
        self._system_kv: "OrderedDict[str, tuple[int, list]]" = OrderedDict()
        self._doc_ids_cache: "OrderedDict[str, list[int]]" = OrderedDict()

    # ----------------------------------------------------------------- sizes
    def namespace(self, system_prompt: str = "") -> str:
        """Model weights + dtype + system prompt ("" means the engine's default prompt)."""
        text = system_prompt or self.system_prompt
        return f"{self.model_id}/sys-{hashlib.sha1(text.encode()).hexdigest()[:12]}"

    def kv_bytes(self, tokens: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self._elem * int(tokens)

    def document_ids(self, text: str) -> list:
        """Token ids of one document part (memoized: documents repeat)."""
        with self._memo_lock:
            ids = self._doc_ids_cache.get(text)
        if ids is None:
            ids = self._encode(self.format.document.format(text=text))
            with self._memo_lock:
                self._doc_ids_cache[text] = ids
                if len(self._doc_ids_cache) > 4096:
                    self._doc_ids_cache.popitem(last=False)
        return ids

    def document_fingerprints(self, doc_tokens, doc_texts) -> list:
        """Hash of each document part's exact token ids (its text in this engine's template)."""
        if doc_texts is None:
            raise ValueError("doc_texts is required by the transformers engine (one text per doc_id)")
        return [token_fingerprint(self.document_ids(text)) for text in doc_texts]

    def prompt_tokens(self, doc_tokens, doc_texts, question, system_prompt) -> int:
        system = self._encode(self.format.system.format(text=system_prompt or self.system_prompt), special=True)
        question_ids = self._encode(self.format.question.format(text=question))
        return len(system) + sum(len(self.document_ids(t)) for t in doc_texts) + len(question_ids)

    def count_tokens(self, text: str) -> int:
        """Tokens a document occupies in the prompt: use it for doc_tokens."""
        return len(self.document_ids(text))

    def _encode(self, text: str, special: bool = False) -> list:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    # ------------------------------------------------------------- prefill
    def prefill(self, request: PrefillRequest, *, chunked: Optional[bool] = None) -> PrefillResult:
        """Prefill the missing documents and the question on top of request.cached.

        chunked (default: the engine's ``chunked``) prefills each document in
        its own forward pass, so a document's KV is computed with the same
        shapes whether or not its prefix was cached: reuse is then bit-exact,
        even in bf16. chunked=False runs one forward over everything missing
        (what a server without document reuse does).
        """
        return self._run(request, 1, chunked).prefill

    def generate(self, request: PrefillRequest, max_new_tokens: int = 16, *,
                 chunked: Optional[bool] = None) -> GenerateResult:
        """Prefill like ``prefill`` then decode greedily; always ``max_new_tokens`` tokens (no EOS stop)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        return self._run(request, max_new_tokens, chunked)

    def _run(self, request: PrefillRequest, max_new_tokens: int, chunked: Optional[bool]) -> GenerateResult:
        chunked = self.chunked if chunked is None else chunked
        system_prompt = request.system_prompt if request.system_prompt else self.system_prompt
        doc_parts = self._validate(request, system_prompt)
        question_ids = self._encode(self.format.question.format(text=request.question))
        torch = self.torch
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            sys_len, sys_kv = self._system(request.namespace, system_prompt)
            total = sys_len + sum(len(p) for p in doc_parts) + len(question_ids)
            if total + max_new_tokens - 1 > self.max_positions:  # the last token is sampled, never fed back
                raise ValueError(
                    f"prompt of {total} tokens (system {sys_len}, documents "
                    f"{[len(p) for p in doc_parts]}, question {len(question_ids)}) plus {max_new_tokens} new tokens "
                    f"exceeds the model's context window max_position_embeddings={self.max_positions}"
                )
            m = len(request.cached)
            load_start = time.perf_counter()
            cache = self._assemble(sys_kv, request.cached)
            load_seconds = time.perf_counter() - load_start
            chunks = [*doc_parts[m:], question_ids] if chunked else [[t for p in doc_parts[m:] for t in p] + question_ids]
            for chunk in chunks:
                self._check_cancelled(request)
                input_ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
                out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1].float()
            first = int(torch.argmax(logits))
            seconds = time.perf_counter() - start
            tokens = [first]
            decode_start = time.perf_counter()
            next_id = first
            for _ in range(max_new_tokens - 1):
                self._check_cancelled(request)
                step = self.model(
                    input_ids=torch.tensor([[next_id]], device=self.device),
                    past_key_values=cache,
                    use_cache=True,
                )
                next_id = int(torch.argmax(step.logits[0, -1]))
                tokens.append(next_id)
            decode_seconds = time.perf_counter() - decode_start
            offset = sys_len + sum(len(p) for p in doc_parts[:m])
            new_kv = []
            for doc_id, part in zip(request.doc_ids[m:], doc_parts[m:]):
                new_kv.append(self._extract(cache, doc_id, offset, len(part)))
                offset += len(part)
        result = PrefillResult(
            seconds=seconds,
            new_kv=new_kv,
            question_tokens=len(question_ids),
            first_token_id=first,
            logits=logits.cpu().numpy(),
            load_seconds=load_seconds,
        )
        return GenerateResult(prefill=result, token_ids=tokens, decode_seconds=decode_seconds)

    @staticmethod
    def _check_cancelled(request: PrefillRequest) -> None:
        if request.cancelled is not None and request.cancelled():
            raise PrefillCancelled(f"prefill of {list(request.doc_ids)} cancelled")

    # ---------------------------------------------------------- validation
    def _validate(self, request: PrefillRequest, system_prompt: str) -> list:
        """Check everything before any compute; return each document's token ids."""
        expected_ns = self.namespace(system_prompt)
        if request.namespace != expected_ns:
            raise ValueError(
                f"namespace {request.namespace!r} does not match this engine and system prompt "
                f"(expected {expected_ns!r}); build it with engine.namespace(system_prompt)"
            )
        if len(request.cached) > len(request.doc_ids):
            raise ValueError(f"cached has {len(request.cached)} entries but there are only {len(request.doc_ids)} doc_ids")
        parts = self.check_documents(request.doc_ids, request.doc_tokens, request.doc_texts)
        for i, kv in enumerate(request.cached):
            self._check_cached(i, kv, request.doc_ids[i], len(parts[i]))
        return parts

    def check_documents(self, doc_ids, doc_tokens, doc_texts) -> list:
        """Check that every document has a text that fits the context window and that
        doc_tokens[i] == count_tokens(doc_texts[i]); return each document's token ids."""
        n = len(doc_ids)
        if doc_texts is None:
            raise ValueError("doc_texts is required by the transformers engine (one text per doc_id)")
        if len(doc_texts) != n or len(doc_tokens) != n:
            raise ValueError(
                f"doc_ids ({n}), doc_tokens ({len(doc_tokens)}) and doc_texts "
                f"({len(doc_texts)}) must have the same length"
            )
        for i, text in enumerate(doc_texts):
            if not isinstance(text, str):
                raise ValueError(f"doc_texts[{i}] ({doc_ids[i]!r}) must be a str, got {type(text).__name__}")
        parts = [self.document_ids(text) for text in doc_texts]
        for i, part in enumerate(parts):
            if len(part) >= self.max_positions:
                raise ValueError(
                    f"doc_texts[{i}] ({doc_ids[i]!r}) has {len(part)} tokens, too long for the "
                    f"context window max_position_embeddings={self.max_positions}"
                )
            if int(doc_tokens[i]) != len(part):
                raise ValueError(
                    f"doc_tokens[{i}]={doc_tokens[i]} but document {doc_ids[i]!r} has "
                    f"{len(part)} tokens in this engine's prompt; use engine.count_tokens(text)"
                )
        return parts

    def _check_cached(self, i: int, kv: DocumentKV, doc_id: str, tokens: int) -> None:
        if kv.doc_id != doc_id:
            raise ValueError(f"cached[{i}].doc_id is {kv.doc_id!r} but doc_ids[{i}] is {doc_id!r}")
        if kv.tokens != tokens:
            raise ValueError(f"cached[{i}].tokens is {kv.tokens} but document {doc_id!r} has {tokens} tokens")
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
    def _system(self, namespace: str, system_prompt: str):
        """(tokens, [(k, v)] per layer) of the system prompt, computed once per namespace."""
        hit = self._system_kv.get(namespace)
        if hit is not None:
            self._system_kv.move_to_end(namespace)
            return hit
        ids = self._encode(self.format.system.format(text=system_prompt), special=True)
        cache = self._new_cache()
        self.model(input_ids=self.torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True,
                   logits_to_keep=1)
        entry = (len(ids), [(layer.keys, layer.values) for layer in cache.layers])
        self._system_kv[namespace] = entry
        if len(self._system_kv) > self._max_system:
            self._system_kv.popitem(last=False)
        return entry

    def _new_cache(self, layers=()):
        """A DynamicCache holding ``layers`` [(keys, values)] as they are.

        DynamicCache's constructor would concatenate each tensor onto an empty
        one (a copy of the whole prefix); placing them directly avoids it. The
        model never writes into them: each update concatenates into new tensors.
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in zip(cache.layers, layers):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        return cache

    def _payload_tensor(self, kv: DocumentKV):
        """Zero-copy view of a payload as [layers, 2, kv_heads, tokens, head_dim]."""
        array = np.ascontiguousarray(kv.payload).reshape(-1)
        with warnings.catch_warnings():
            # Payloads may be read-only views of cache blocks; they are only read here.
            warnings.simplefilter("ignore", UserWarning)
            raw = self.torch.from_numpy(array)
        return raw.view(self.torch_dtype).view(self.num_layers, 2, self.num_kv_heads, kv.tokens, self.head_dim)

    def _assemble(self, sys_kv, cached: Sequence[DocumentKV]):
        """A DynamicCache holding system + cached documents (one concatenation per layer)."""
        torch = self.torch
        docs = [self._payload_tensor(kv).to(self.device) for kv in cached]
        layers = []
        for layer, (keys, values) in enumerate(sys_kv):
            if docs:
                keys = torch.cat([keys] + [d[layer, 0].unsqueeze(0) for d in docs], dim=2)
                values = torch.cat([values] + [d[layer, 1].unsqueeze(0) for d in docs], dim=2)
            layers.append((keys, values))
        return self._new_cache(layers)

    def _extract(self, cache, doc_id: str, start: int, tokens: int) -> DocumentKV:
        """Copy one document's span of every layer into a fresh payload."""
        torch = self.torch
        out = torch.empty((self.num_layers, 2, self.num_kv_heads, tokens, self.head_dim), dtype=self.torch_dtype)
        for i, layer in enumerate(cache.layers):
            out[i, 0].copy_(layer.keys[0, :, start:start + tokens])
            out[i, 1].copy_(layer.values[0, :, start:start + tokens])
        payload = out.view(-1).view(torch.uint8).numpy()
        return DocumentKV(doc_id=doc_id, tokens=tokens, nbytes=payload.nbytes, payload=payload)
