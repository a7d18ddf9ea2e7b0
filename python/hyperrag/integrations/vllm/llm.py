"""A vLLM ``LLM`` with HyperRAG under it, and RAG requests that name their segments.

    from hyperrag.integrations.vllm import RagPrompts, make_llm
    llm = make_llm(model_dir, capacities={"host": 4 << 30})      # vLLM + the HyperRAG connector
    prompts = RagPrompts(model_dir)                              # the same token ids as the transformers engine
    out = llm.generate(*prompts.request(doc_ids, doc_texts=texts, question=q))

``make_request`` puts the segment keys (content-addressed: hyperrag.cache.identity)
in ``kv_transfer_params``; the connector loads whole cached segments from
HyperRAG's tiers and stores new ones. With ``order="cache_aware"`` the
documents are prompted in the order whose cached prefix is longest (needs the
store in this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from hyperrag.cache.identity import model_namespace
from hyperrag.cache.segment_store import shared_store
from hyperrag.engines.prompt_builder import DEFAULT_SYSTEM_PROMPT, PromptBuilder, PromptFormat, flat_token_ids

CONNECTOR = "HyperRAGConnector"
CONNECTOR_MODULE = "hyperrag.integrations.vllm.connector"
DEFAULT_CAPACITIES = {"host": 4 << 30}
ORDERS = ("retrieval", "cache_aware")


def connector_config(capacities: Mapping[str, int] = DEFAULT_CAPACITIES, directory: Optional[str] = None,
                     policy: str = "gdsf"):
    """The KVTransferConfig that puts HyperRAG under a vLLM engine (recompute on a failed load)."""
    from vllm.config import KVTransferConfig

    extra = {"capacities": dict(capacities), "policy": policy}
    if directory is not None:
        extra["directory"] = str(directory)
    return KVTransferConfig(kv_connector=CONNECTOR, kv_connector_module_path=CONNECTOR_MODULE, kv_role="kv_both",
                            kv_connector_extra_config=extra, kv_load_failure_policy="recompute")


def make_llm(model_dir, *, capacities: Mapping[str, int] = DEFAULT_CAPACITIES, directory: Optional[str] = None,
             policy: str = "gdsf", **vllm_kwargs):
    """vllm.LLM(model_dir, ...) with HyperRAG's connector: ``capacities`` of the store's
    tiers, ``directory`` a folder other processes share (None: memory only)."""
    from vllm import LLM

    return LLM(model=str(model_dir), kv_transfer_config=connector_config(capacities, directory, policy),
               **vllm_kwargs)


class RagPrompts:
    """Token ids and segment parameters of RAG requests for vLLM, built like the
    transformers engine builds them (PromptBuilder, the model's namespace)."""

    def __init__(self, model_dir, dtype: str = "bfloat16", system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                 prompt_format: Optional[PromptFormat] = None):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(model_dir), local_files_only=True)
        self.builder = PromptBuilder(tokenizer, prompt_format, system_prompt)
        self.namespace = model_namespace(model_dir, dtype)

    def request(self, doc_ids: Sequence[str], doc_texts: Optional[Sequence[str]] = None,
                doc_token_ids=None, question: str = "", question_ids=None, system_prompt: str = "",
                order: str = "retrieval", store_config: Optional[dict] = None, **sampling) -> Tuple[dict, object]:
        """(prompt, SamplingParams) for ``LLM.generate``; ``sampling`` goes to SamplingParams
        (default greedy, 16 tokens). ``order="cache_aware"`` asks the in-process store
        (``store_config``: the capacities/directory/policy given to make_llm)."""
        from vllm import SamplingParams

        if order not in ORDERS:
            raise ValueError(f"order {order!r} is unknown; allowed: {', '.join(ORDERS)}")
        prompt = self.builder.prompt(list(doc_ids), None, doc_texts, doc_token_ids, question, question_ids,
                                     system_prompt)
        if order == "cache_aware":
            store = shared_store(**{"capacities": DEFAULT_CAPACITIES, **(store_config or {})})
            keys = list(prompt.keys)
            index = {k: i for i, k in enumerate(keys)}
            prompt = prompt.select([index[k] for k in store.cache.best_order(self.namespace, keys, prompt.fixed)])
        params = {"namespace": self.namespace,
                  "segments": [[k, t] for k, t in zip(prompt.keys, prompt.segment_tokens)]}
        sampling = {"temperature": 0.0, "max_tokens": 16, **sampling}
        extra = dict(sampling.pop("extra_args", None) or {})
        extra["kv_transfer_params"] = {**extra.get("kv_transfer_params", {}), "hyperrag": params}
        return {"prompt_token_ids": flat_token_ids(prompt)}, SamplingParams(extra_args=extra, **sampling)
