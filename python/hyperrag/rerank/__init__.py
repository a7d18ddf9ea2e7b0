"""Reranking retrieved candidates with a decoder LLM that reuses document KV."""
from .reranker import IndexReport, KVReuseReranker, RerankStats  # noqa: F401
from .rerank_format import LAYOUTS, RerankFormat  # noqa: F401
