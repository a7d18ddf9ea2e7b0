"""A document re-sent under the same id with new content is recomputed, never served its old KV."""
from __future__ import annotations

import hashlib
import struct

import pytest

from hyperrag.cache import KVCache, document_id, document_key, token_fingerprint
from hyperrag.engines.base import PrefillRequest
from hyperrag.serve import PipelineTiming, Query, RAGServeController
from engine_fixtures import smollm2_engine  # noqa: F401

QUESTION = "What is the access code of the archive? Answer with the number only."
FILLER = ("The archive in the old mill keeps letters, ledgers and maps from the valley's three villages. "
          "Visitors sign the register at the door and may copy documents by hand. ")
OUTPUT_TOKENS = 16


def test_fingerprints_are_stable_and_content_addressed():
    assert token_fingerprint([1, 2, 3]) == token_fingerprint((1, 2, 3))
    assert token_fingerprint([1, 2, 3]) != token_fingerprint([1, 2, 4])
    # The documented encoding (blake2b-64 of little-endian int64 ids), pinned too: keys must agree
    # across processes, machines and releases (never Python's salted hash()).
    assert token_fingerprint([1, 2, 3]) == hashlib.blake2b(struct.pack("<3q", 1, 2, 3), digest_size=8).hexdigest()
    assert token_fingerprint([1, 2, 3]) == "77ba1ae68d5afbb4"
    key = document_key("doc#7", token_fingerprint([5]))
    assert document_id(key) == "doc#7"


def fresh_answer(engine, texts, ids):
    """Greedy tokens of a prefill from scratch (no cached KV)."""
    prompt = engine.prompt(list(ids), doc_texts=[texts[d] for d in ids], question=QUESTION)
    return list(engine.generate(PrefillRequest(engine.namespace(), prompt), max_new_tokens=OUTPUT_TOKENS).token_ids)


@pytest.mark.slow
def test_changed_document_is_recomputed_and_its_stale_node_dropped(smollm2_engine):
    engine = smollm2_engine
    kv = engine.kv_bytes(1)
    cache = KVCache({"gpu": 4000 * kv, "host": 8000 * kv}, policy="lru", block_bytes=16 << 10)
    ctrl = RAGServeController(engine, cache, PipelineTiming(), speculative=False,
                              default_output_tokens=OUTPUT_TOKENS)
    texts = {"intro": FILLER, "code": FILLER + "The access code of the archive is 4711."}

    def serve(qid, ids):
        q = Query(query_id=qid, text=QUESTION, doc_ids=ids, doc_tokens=[engine.count_tokens(texts[d]) for d in ids],
                  doc_texts=[texts[d] for d in ids])
        return ctrl.process(q)

    def keys_of(doc):
        return {cache.node(n).doc_id for n in cache.tree.node_ids() if document_id(cache.node(n).doc_id) == doc}

    first = serve("q0", ["intro", "code"])
    assert first.output_token_ids == fresh_answer(engine, texts, ["intro", "code"])
    old_keys = keys_of("code")
    assert serve("q1", ["intro", "code"]).cached_tokens == first.computed_tokens - first.question_tokens

    # New content, same token count (a digit for a digit), then a different token count.
    for n, new_code in enumerate(("The access code of the archive is 9302.",
                                  "The access code of the archive was changed in spring; it is now 58.")):
        before_tokens = engine.count_tokens(texts["code"])
        texts["code"] = FILLER + new_code
        assert (engine.count_tokens(texts["code"]) == before_tokens) == (n == 0)
        stale_answer = first.output_token_ids if n == 0 else None
        r = serve(f"changed{n}", ["intro", "code"])
        expected = fresh_answer(engine, texts, ["intro", "code"])
        assert r.output_token_ids == expected
        if stale_answer is not None:
            assert expected != stale_answer  # the question reads the changed digits: stale KV would show
        # The unchanged prefix (system prompt, intro) is still reused.
        assert r.cached_tokens == len(engine.system_ids()) + engine.count_tokens(texts["intro"])
        new_keys = keys_of("code")
        assert new_keys == {document_key("code", token_fingerprint(engine.document_ids(texts["code"])))}
        assert not new_keys & old_keys and all(cache.tree.document_nodes(k) == 0 for k in old_keys)
        old_keys = new_keys
        # Served again: a full hit on the new content.
        again = serve(f"again{n}", ["intro", "code"])
        assert again.output_token_ids == expected and again.computed_tokens == again.question_tokens
    assert ctrl.metrics().stale_nodes_removed == 2
    assert cache.tree.check_invariants() == []
