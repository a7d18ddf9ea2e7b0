"""Bad input to the native tree: a clear exception naming the problem, tree unchanged."""
import pytest

from hyperrag.cache import CapacityError, CostProfile, KnowledgeTree, UnknownNodeError

PROFILE = CostProfile([0, 1024], [64, 1024], [[0.01, 0.1], [0.02, 0.2]])


def snapshot(tree):
    s = tree.stats()
    stats = (s.num_nodes, s.interned_names, s.used_bytes, s.capacity_bytes, s.evictions, s.clock, s.lookups,
             s.hits, s.hit_tokens, s.lookup_tokens)
    nodes = []
    for i in tree.node_ids():
        n = tree.node(i)
        nodes.append((i, n.doc_id, n.parent, n.tier, n.resident_tiers, n.priorities, n.lock_count,
                      n.frequency, n.cost_samples, n.last_access, n.children))
    return stats, nodes


@pytest.fixture
def tree():
    t = KnowledgeTree({"gpu": 1000, "host": 2000}, "pgdsf", PROFILE)
    ids = t.insert("m", ["a", "b"], [64, 128], [300, 300]).node_ids
    t.record_compute(ids, 0, 192)
    t.insert("m", ["c"], [64], [300], tier="host")
    t.match("m", ["a"])
    return t


def ids_of(tree):
    """Node ids by document, read without counting a lookup."""
    return {tree.node(i).doc_id: i for i in tree.node_ids()}


CASES = [
    # (call, exception, words the message must contain)
    (lambda t, ids: t.insert("m", ["x", "y"], [1], [1, 1]), ValueError, ["doc_tokens", "1 entries", "2"]),
    (lambda t, ids: t.insert("m", ["x"], [1], [1, 1]), ValueError, ["doc_bytes"]),
    (lambda t, ids: t.insert("m", [], [], []), ValueError, ["doc_ids", "empty"]),
    (lambda t, ids: t.insert("m", ["x", ""], [1, 1], [1, 1]), ValueError, ["doc_ids[1]", "empty"]),
    (lambda t, ids: t.insert("", ["x"], [1], [1]), ValueError, ["namespace"]),
    (lambda t, ids: t.insert("m", ["x", "y", "x"], [1, 1, 1], [1, 1, 1]), ValueError, ["'x'", "more than once"]),
    (lambda t, ids: t.insert("m", ["x"], [0], [1]), ValueError, ["doc_tokens[0]", "> 0"]),
    (lambda t, ids: t.insert("m", ["x"], [-3], [1]), ValueError, ["doc_tokens[0]"]),
    (lambda t, ids: t.insert("m", ["x"], [1], [0]), ValueError, ["doc_bytes[0]"]),
    (lambda t, ids: t.insert("m", ["x"], [1], [1], tier="ssd"), ValueError, ["'ssd'", "gpu, host, remote"]),
    (lambda t, ids: t.insert("m", ["x"], [1], [1], tier="remote"), ValueError, ["'remote'", "not configured"]),
    (lambda t, ids: t.insert("m", ["a", "x"], [65, 1], [300, 1]), ValueError, ["'a'", "64 tokens"]),
    # c (host) promoted into gpu plus 800 new bytes can never fit: refused before evicting anything.
    (lambda t, ids: t.insert("m", ["c", "big"], [64, 1], [300, 800]), CapacityError,
     ["'gpu'", "1100 bytes", "capacity is 1000"]),
    # Byte sums past int64 are refused, not wrapped into a negative size.
    (lambda t, ids: t.insert("m", ["x", "y"], [1, 1], [2**62, 2**62]), CapacityError, ["'gpu'", "more than"]),
    # Arguments of the wrong type or range name the argument, not a pybind11 signature list.
    (lambda t, ids: t.match(None, ["a"]), TypeError, ["match: namespace", "str", "None"]),
    (lambda t, ids: t.match("m", "ab"), TypeError, ["match: doc_ids", "list of str"]),
    (lambda t, ids: t.match("m", ["a", 7]), TypeError, ["match: doc_ids[1]", "str"]),
    (lambda t, ids: t.insert("m", ["x"], [2**63], [1]), ValueError, ["insert: doc_tokens[0]", "64-bit"]),
    (lambda t, ids: t.insert("m", ["x"], [1.5], [1]), TypeError, ["insert: doc_tokens[0]", "integer"]),
    (lambda t, ids: t.insert("m", ["x"], [True], [1]), TypeError, ["insert: doc_tokens[0]", "integer"]),
    (lambda t, ids: t.insert("m", ["x"], [1], [1], lock="yes"), TypeError, ["insert: lock", "True or False"]),
    (lambda t, ids: t.insert("m", ["x"], [1], [1], tier=None), TypeError, ["insert: tier", "str"]),
    (lambda t, ids: t.lock([-1]), ValueError, ["lock: node_ids[0]", "0 to"]),
    (lambda t, ids: t.remove_document(None), TypeError, ["remove_document: doc_id"]),
    (lambda t, ids: t.remove_document(""), ValueError, ["doc_id", "non-empty"]),
    (lambda t, ids: t.peek("m", []), ValueError, ["doc_ids", "empty"]),
    (lambda t, ids: t.evict("gpu", 2**64), ValueError, ["evict: nbytes", "64-bit"]),
    (lambda t, ids: t.insert("m", ["huge"], [1], [5000]), CapacityError, ["'gpu'", "5000"]),
    (lambda t, ids: t.match("m", ["a", "a"]), ValueError, ["more than once"]),
    (lambda t, ids: t.match("m", ["a"], [1, 2]), ValueError, ["doc_tokens"]),
    (lambda t, ids: t.unlock([ids["a"]]), ValueError, ["not locked"]),
    (lambda t, ids: t.lock([ids["a"], 987654]), UnknownNodeError, ["987654"]),
    (lambda t, ids: t.touch([424242]), UnknownNodeError, ["424242"]),
    (lambda t, ids: t.node(1 << 40), UnknownNodeError, ["unknown node id"]),
    (lambda t, ids: t.remove(31337), UnknownNodeError, ["31337"]),
    (lambda t, ids: t.record_compute([ids["a"]], -1, 10), ValueError, ["cached_tokens"]),
    (lambda t, ids: t.record_compute([ids["a"]], 0, 0), ValueError, ["new_tokens"]),
    (lambda t, ids: t.evict("gpu", 0), ValueError, ["nbytes"]),
    (lambda t, ids: t.evict("disk", 10), ValueError, ["'disk'"]),
    (lambda t, ids: t.evict("gpu", 10**9), CapacityError, ["'gpu'"]),
    (lambda t, ids: t.promote([ids["c"]], tier="remote"), ValueError, ["not configured"]),
    (lambda t, ids: t.set_capacity("gpu", -5), ValueError, ["nbytes"]),
]


@pytest.mark.parametrize("call,exc,words", CASES)
def test_bad_input_raises_and_leaves_tree_unchanged(tree, call, exc, words):
    ids = ids_of(tree)
    before = snapshot(tree)
    with pytest.raises(exc) as info:
        call(tree, ids)
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)
    assert snapshot(tree) == before


def test_locked_set_larger_than_capacity(tree):
    ids = ids_of(tree)
    a, b = ids["a"], ids["b"]
    tree.lock([b])
    before = snapshot(tree)
    with pytest.raises(CapacityError, match="locked"):
        tree.set_capacity("gpu", 500)        # a + b = 600 locked bytes
    with pytest.raises(CapacityError):
        tree.insert("m", ["z"], [1], [500])  # 600 + 500 > 1000
    with pytest.raises(ValueError, match="locked"):
        tree.remove(a)                       # b below a is locked
    assert snapshot(tree) == before
    assert isinstance(CapacityError("x"), ValueError)
    tree.unlock([b])
    assert tree.insert("m", ["z"], [1], [500]).evictions


def test_unlock_more_often_than_locked(tree):
    a = ids_of(tree)["a"]
    tree.lock([a])
    before = snapshot(tree)
    with pytest.raises(ValueError, match="locked 1 time"):
        tree.unlock([a, a])
    assert snapshot(tree) == before


@pytest.mark.parametrize("kwargs,words", [
    (dict(capacities={"gpu": 10}, policy="fifo"), ["'fifo'", "pgdsf, gdsf, lru, lfu"]),
    (dict(capacities={"gpu": 10}, policy="pgdsf"), ["profile"]),
    (dict(capacities={"gpu": 10, "nvme": 10}, policy="lru"), ["'nvme'"]),
    (dict(capacities={"gpu": 0}, policy="lru"), ["capacities['gpu']", "> 0"]),
    (dict(capacities={}, policy="lru"), ["capacities"]),
])
def test_bad_constructor_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        KnowledgeTree(**kwargs)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("args,words", [
    (([], [64], []), ["cached_tokens", "empty"]),
    (([0, 0], [64], [[1], [1]]), ["cached_tokens", "strictly increasing"]),
    (([0], [0], [[1]]), ["new_tokens[0]"]),
    (([0], [64, 128], [[1]]), ["seconds[0]", "columns"]),
    (([0], [64], [[-1.0]]), ["seconds[0][0]", ">= 0"]),
    (([0], [64], [[float("nan")]]), ["seconds[0][0]"]),
])
def test_bad_cost_profile(args, words):
    with pytest.raises(ValueError) as info:
        CostProfile(*args)
    for w in words:
        assert w in str(info.value)


def test_wrong_types_are_type_errors(tree):
    before = snapshot(tree)
    with pytest.raises(TypeError):
        tree.insert("m", "abc", [1, 1, 1], [1, 1, 1])  # a string is not a list of ids
    with pytest.raises(TypeError):
        tree.insert("m", ["x"], ["1"], [1])
    with pytest.raises(TypeError):
        tree.lock("a")
    assert snapshot(tree) == before


def test_constructor_arguments_name_the_field():
    with pytest.raises(TypeError, match="KnowledgeTree: capacities"):
        KnowledgeTree([("gpu", 10)], "lru")
    with pytest.raises(ValueError, match=r"capacities\['gpu'\].*64-bit"):
        KnowledgeTree({"gpu": 2**64}, "lru")
    with pytest.raises(TypeError, match="KnowledgeTree: profile"):
        KnowledgeTree({"gpu": 10}, "pgdsf", profile="fast")
    with pytest.raises(TypeError, match=r"CostProfile: seconds\[0\]\[1\]"):
        CostProfile([0], [1, 2], [[0.1, "slow"]])
