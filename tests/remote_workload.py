"""The queries both serving processes of the remote-tier tests run."""
from hyperrag import Query
from hyperrag.data import load_corpus, load_queries


def queries(n: int):
    docs = sorted(load_corpus(), key=lambda d: len(d.text))[:max(n, 8)]
    texts = {d.doc_id: d.text for d in docs}
    ids = sorted(texts)
    out = []
    for i, q in enumerate(load_queries(n)):
        picked = [ids[i], ids[(i + 3) % len(ids)]]  # a new path per query: every hit is another process's
        out.append(Query(query_id=f"q{i}", text=q.text, doc_ids=picked, doc_texts=[texts[d] for d in picked]))
    return out
