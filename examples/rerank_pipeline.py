"""The rewriter_reranker paradigm for real: FAISS top-N -> decoder reranking with document-KV
reuse -> top-k -> generation by the serving controller, all on one KV cache.

The reranker keeps each candidate's [instruction][document] KV as a node of the
controller's own KnowledgeTree (a rerank namespace beside the generation
namespace), so one memory budget and one eviction policy serve both; a
candidate seen by an earlier query is scored by prefilling only the question.
With --index the whole corpus is precomputed first (what `hyperrag rerank
index` does into a directory for serving processes).

    python examples/rerank_pipeline.py [--queries 4] [--candidates 20] [--top-k 3] [--tokens 24]
                                       [--scoring yes_no|query_likelihood] [--index] [--model smollm2]
"""
import argparse
import time

from hyperrag import Query, RAGOptimize, RAGOptimizeConfig
from hyperrag.cache.segment_store import SegmentStore
from hyperrag.data import load_corpus, load_queries
from hyperrag.rerank import KVReuseReranker
from hyperrag.retrieval import FaissRetriever, MiniLMEmbedder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=20, help="FAISS top-N handed to the reranker")
    ap.add_argument("--top-k", type=int, default=3, help="documents kept for generation")
    ap.add_argument("--tokens", type=int, default=24, help="answer tokens")
    ap.add_argument("--scoring", choices=("yes_no", "query_likelihood"), default="query_likelihood")
    ap.add_argument("--index", action="store_true", help="precompute every document's reranker KV first")
    ap.add_argument("--model", default="smollm2", help="'smollm2' or a local Hugging Face model directory")
    args = ap.parse_args()

    corpus = load_corpus()
    texts = {d.doc_id: d.text for d in corpus}
    print(f"indexing {len(corpus)} documents with MiniLM embeddings + FAISS ...")
    retriever = FaissRetriever(MiniLMEmbedder(), [d.title + ". " + d.text for d in corpus], list(texts))
    controller = RAGOptimize(RAGOptimizeConfig(paradigm="rewriter_reranker")).build_controller(
        engine="transformers", model_path=args.model, default_output_tokens=args.tokens,
        gpu_bytes=512 << 20, host_bytes=2 << 30)
    reranker = KVReuseReranker(args.model, store=SegmentStore(cache=controller.cache), scoring=args.scoring)
    if args.index:
        report = reranker.index(list(texts), list(texts.values()), progress=True)
        print(f"reranker KV: {report.computed} documents computed in {report.seconds:.0f} s, "
              f"{report.per_document()['stored_bytes'] / 2**20:.1f} MiB each")
    tokenizer = controller.engine.tokenizer

    for round_ in (1, 2):
        for q in load_queries(args.queries):
            found = retriever.search_exact(q.text, args.candidates)
            start = time.perf_counter()
            ranked = reranker.rerank(q.text, found.doc_ids, [texts[d] for d in found.doc_ids], top_k=args.top_k)
            rerank_s = time.perf_counter() - start
            doc_ids = [d for d, _ in ranked]
            r = controller.process(Query(query_id=f"{q.query_id}-r{round_}", text=q.text, doc_ids=doc_ids,
                                         doc_texts=[texts[d] for d in doc_ids]))
            answer = tokenizer.decode(r.output_token_ids, skip_special_tokens=True).strip().replace("\n", " ")
            where = lambda ids: ids.index(q.target) + 1 if q.target in ids else "-"  # noqa: E731
            print(f"[round {round_}] {q.text}\n  target rank: FAISS {where(list(found.doc_ids))}, reranked "
                  f"{where(doc_ids)}; rerank {rerank_s * 1e3:.0f} ms for {args.candidates} candidates, "
                  f"TTFT {r.ttft_s * 1e3:.0f} ms (cached {r.matched_docs}/{len(doc_ids)})\n  -> {answer}")
    s, m = reranker.stats(), controller.metrics()
    print(f"reranker: {s.candidates} candidates, {s.reused} scored on stored KV, {s.computed} computed; "
          f"cache: {m.num_nodes} nodes (reranker and generation), hit rate {m.hit_rate:.2f}")


if __name__ == "__main__":
    main()
