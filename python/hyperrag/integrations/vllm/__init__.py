"""HyperRAG under vLLM: a KV connector over HyperRAG's tree and tiers (needs vllm installed;
scripts/install_vllm.sh makes a virtualenv with the CPU build).

    llm = make_llm(model_dir)                      # vllm.LLM with HyperRAGConnector
    prompts = RagPrompts(model_dir)
    outputs = llm.generate(*prompts.request(doc_ids, doc_texts=texts, question=question))
"""
from .llm import CONNECTOR, CONNECTOR_MODULE, RagPrompts, connector_config, make_llm

__all__ = ["CONNECTOR", "CONNECTOR_MODULE", "RagPrompts", "connector_config", "make_llm"]


def __getattr__(name):
    if name == "HyperRAGConnector":  # imports vllm: only when asked for
        from .connector import HyperRAGConnector

        return HyperRAGConnector
    raise AttributeError(name)
