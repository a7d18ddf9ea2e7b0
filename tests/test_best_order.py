"""best_order: the document order with the most cached tokens, native and reference alike."""
import itertools
import random

import pytest

from hyperrag.cache import KnowledgeTree
from hyperrag.testing.reference_tree import ReferenceTree


@pytest.mark.parametrize("seed", range(3))
def test_best_order_is_optimal_and_agrees_with_the_reference(seed):
    rng = random.Random(seed)
    for _ in range(100):
        trees = [KnowledgeTree({"gpu": 10**9}, "lru"), ReferenceTree({"gpu": 10**9}, "lru")]
        docs = [f"d{i}" for i in range(7)]
        tokens = {d: rng.randint(1, 50) for d in docs}
        for _ in range(rng.randint(0, 12)):
            path = ["sys"] + rng.sample(docs, rng.randint(1, 4))
            for t in trees:
                t.insert("m", path, [5] + [tokens[d] for d in path[1:]], [1] * len(path))
        query = ["sys"] + rng.sample(docs, rng.randint(1, 5))
        native, reference = (t.best_order("m", query, 1) for t in trees)
        assert native == reference
        assert native[0] == "sys" and sorted(native) == sorted(query)

        def cached(order):
            return sum(trees[0].node(n).tokens for n in trees[0].peek("m", order).node_ids)

        assert cached(native) == max(cached(["sys", *p]) for p in itertools.permutations(query[1:]))
        # Uncached documents keep their retrieval order after the cached path.
        rest = [d for d in native[1 + len(trees[0].peek("m", native).node_ids) - 1:] if d in query[1:]]
        assert rest == [d for d in query[1:] if d in rest]
