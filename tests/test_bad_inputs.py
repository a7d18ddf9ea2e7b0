"""Every public entry point refuses bad input with an exception naming the field and what it
allows, and nothing changes: tree statistics, pool bytes, controller metrics and the tree's clocks
are identical before and after. The CLI's rows exit 2 with one line on stderr."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pytest

from hyperrag import LLMModel, RAGOptimize, RAGOptimizeConfig
from hyperrag.cache import BlockPool, KnowledgeTree, KVCache
from hyperrag.serve import PipelineTiming, Query, RAGServeController
from hyperrag.serve.build import build_controller
from engine_fixtures import tiny_engine, tiny_model_dir, tiny_texts  # noqa: F401


@dataclass
class Env:
    ctrl: RAGServeController       # simulated engine, warmed up
    staged: RAGServeController     # tiny real model, warmed up
    texts: dict
    tree: KnowledgeTree
    pool: BlockPool
    rago: RAGOptimize


@pytest.fixture(scope="module")
def env(tiny_engine, tiny_texts):
    rago = RAGOptimize(RAGOptimizeConfig(gpu_budget_gb=1.0, host_budget_gb=4.0))
    ctrl = rago.build_controller()
    ctrl.process_batch([Query(f"w{i}", "?", [f"d{i % 5}", f"d{(i + 1) % 5}"], [300, 200], arrival_s=0.01 * i)
                        for i in range(20)])
    kv = tiny_engine.kv_bytes(1)
    staged = RAGServeController(tiny_engine, KVCache({"gpu": 2000 * kv}, policy="lru"), PipelineTiming())
    ids = sorted(tiny_texts)[:3]
    staged.process(Query("w", "?", ids, [tiny_engine.count_tokens(tiny_texts[d]) for d in ids],
                         doc_texts=[tiny_texts[d] for d in ids]))
    tree = KnowledgeTree({"gpu": 1000, "host": 4000}, "lru")
    tree.insert("m", ["a", "b"], [1, 1], [300, 300])
    pool = BlockPool(64, 8, pinned=False)
    pool.allocate(2)
    return Env(ctrl, staged, tiny_texts, tree, pool, rago)


def snapshot(env: Env):
    """Everything a refused call must leave as it was."""
    out = []
    for c in (env.ctrl, env.staged):
        s = c.cache.stats()
        out.append((s.num_nodes, s.interned_names, dict(s.used_bytes), s.lookups, s.hits, s.hit_tokens,
                    s.lookup_tokens, dict(s.evictions), dict(s.clock),
                    {t: c.cache.storage_stats()[t]["blocks_used"] for t in c.cache.tiers},
                    c.metrics().as_dict()))
    s = env.tree.stats()
    out.append((s.num_nodes, dict(s.used_bytes), dict(s.clock), s.lookups, s.interned_names))
    out.append((env.pool.used_blocks, env.pool.free_blocks))
    return out


def query(**fields) -> Query:
    base = dict(query_id="bad", text="what?", doc_ids=["d1", "d2"], doc_tokens=[300, 200])
    return Query(**{**base, **fields})


def staged_call(env: Env, texts=None, stages=None, **kw):
    class Stage:
        def __init__(self, ids, final):
            self.doc_ids, self.final = ids, final

    ids = sorted(env.texts)[:2]
    stages = [Stage(ids, False), Stage(ids, True)] if stages is None else stages
    return env.staged.process_staged(kw.pop("query_id", "s"), "what?", stages,
                                     {d: env.texts[d] for d in ids} if texts is None else texts, **kw)


@dataclass
class Case:
    name: str
    call: Callable[[Env], object]
    exc: type
    words: Sequence[str]  # the field and what it allows must both be named


CASES = [
    # RAGOptimizeConfig
    Case("config paradigm", lambda e: RAGOptimizeConfig(paradigm="agentic"), ValueError, ["paradigm", "hyperscale"]),
    Case("config model", lambda e: RAGOptimizeConfig(model="gpt-9"), ValueError, ["model 'gpt-9'", "allowed"]),
    Case("config gpu budget", lambda e: RAGOptimizeConfig(gpu_budget_gb=-1.0), ValueError, ["gpu_budget_gb", "> 0"]),
    Case("config host budget nan", lambda e: RAGOptimizeConfig(host_budget_gb=math.nan), ValueError,
         ["host_budget_gb", "finite"]),
    Case("config top_k", lambda e: RAGOptimizeConfig(top_k=0), ValueError, ["top_k", "positive integer"]),
    Case("config window", lambda e: RAGOptimizeConfig(doc_tokens=10**9), ValueError,
         ["doc_tokens=1000000000", "context window of 131072"]),
    Case("config window phi", lambda e: RAGOptimizeConfig(model=LLMModel.PHI_3_MINI, doc_tokens=1024), ValueError,
         ["phi-3-mini", "context window of 4096"]),
    Case("config policy", lambda e: RAGOptimizeConfig(policy="fifo"), ValueError, ["policy 'fifo'", "pgdsf"]),
    Case("config seed", lambda e: RAGOptimizeConfig(seed=1.5), ValueError, ["seed", "integer"]),
    # Query fields, refused by process() before any lookup
    Case("query text None", lambda e: e.ctrl.process(query(text=None)), ValueError, ["text", "str"]),
    Case("query arrival inf", lambda e: e.ctrl.process(query(arrival_s=math.inf)), ValueError,
         ["arrival_s", "[0, 1e+06]"]),
    Case("query arrival 1e300", lambda e: e.ctrl.process(query(arrival_s=1e300)), ValueError,
         ["arrival_s", "[0, 1e+06]"]),
    Case("query arrival negative", lambda e: e.ctrl.process(query(arrival_s=-1.0)), ValueError, ["arrival_s"]),
    Case("query arrival nan", lambda e: e.ctrl.process(query(arrival_s=math.nan)), ValueError, ["arrival_s"]),
    Case("query doc_tokens 1e9", lambda e: e.ctrl.process(query(doc_tokens=[10**9, 1])), ValueError,
         ["doc_tokens", "at most 16777216"]),
    Case("query beyond the model window", lambda e: e.ctrl.process(query(doc_tokens=[100_000, 40_000])), ValueError,
         ["140000 in 2 documents", "context window of 131072"]),
    Case("query output beyond the window", lambda e: e.ctrl.process(query(output_tokens=131_000)), ValueError,
         ["output_tokens=131000", "context window"]),
    Case("query doc_tokens 2**63", lambda e: e.ctrl.process(query(doc_tokens=[2**63, 1])), ValueError,
         ["doc_tokens", "positive integers"]),
    Case("query doc_tokens bool", lambda e: e.ctrl.process(query(doc_tokens=[True, 1])), ValueError,
         ["doc_tokens", "positive integers"]),
    Case("query doc_texts None entry", lambda e: e.ctrl.process(query(doc_texts=[None, "x"])), ValueError,
         ["doc_texts", "strings"]),
    Case("query hops fractional", lambda e: e.ctrl.process(query(hops=[1.5, 0.5])), ValueError,
         ["hops", "positive integers summing to len(doc_ids)=2"]),
    Case("query hops short", lambda e: e.ctrl.process(query(hops=[1])), ValueError, ["hops", "summing"]),
    Case("query output_tokens huge", lambda e: e.ctrl.process(query(output_tokens=10**8)), ValueError,
         ["output_tokens", "[0, 1048576]"]),
    Case("query output_tokens negative", lambda e: e.ctrl.process(query(output_tokens=-1)), ValueError,
         ["output_tokens"]),
    Case("query duplicate docs", lambda e: e.ctrl.process(query(doc_ids=["d1", "d1"])), ValueError, ["duplicates"]),
    Case("query lengths differ", lambda e: e.ctrl.process(query(doc_tokens=[1])), ValueError,
         ["len(doc_ids)=2 != len(doc_tokens)=1"]),
    Case("query system_prompt", lambda e: e.ctrl.process(query(system_prompt=5)), ValueError,
         ["system_prompt", "str"]),
    Case("query interim ids", lambda e: e.ctrl.process(query(interim_doc_ids=["abc"])), ValueError,
         ["interim_doc_ids", "lists of document ids"]),
    Case("query id", lambda e: e.ctrl.process(query(query_id="")), ValueError, ["query_id", "non-empty string"]),
    Case("query doc_ids string", lambda e: e.ctrl.process(query(doc_ids="d1")), ValueError, ["doc_ids", "list"]),
    # process_batch
    Case("batch of a string", lambda e: e.ctrl.process_batch("abc"), TypeError, ["queries", "list of Query"]),
    Case("batch with a non-query", lambda e: e.ctrl.process_batch([query(query_id="ok"), "x"]), TypeError,
         ["hyperrag Query"]),
    Case("batch bad second query", lambda e: e.ctrl.process_batch([query(query_id="ok"), query(text=None)]),
         ValueError, ["text"]),
    Case("batch duplicate ids", lambda e: e.ctrl.process_batch([query(), query()]), ValueError,
         ["duplicate query_id 'bad'", "unique"]),
    # process_staged
    Case("staged on an engine without tokenizer", lambda e: e.ctrl.process_staged("s", "?", [], {}), TypeError,
         ["process_staged", "tokenizes"]),
    Case("staged text missing", lambda e: staged_call(e, texts={}), ValueError, ["doc_texts has no text"]),
    Case("staged text not str", lambda e: staged_call(e, texts={d: None for d in sorted(e.texts)[:2]}), ValueError,
         ["doc_texts", "str"]),
    Case("staged texts not a dict", lambda e: staged_call(e, texts=["x"]), ValueError, ["doc_texts", "dict"]),
    Case("staged no stages", lambda e: staged_call(e, stages=[]), ValueError, ["stages yielded no result"]),
    Case("staged output tokens", lambda e: staged_call(e, output_tokens=-3), ValueError, ["output_tokens"]),
    Case("staged beyond the window", lambda e: staged_call(e, output_tokens=4000), ValueError,
         ["output_tokens=4000", "context window of 2048"]),
    # build_controller and the controller's options
    Case("build engine", lambda e: build_controller(e.rago.config, e.rago.result.best, engine="vllm2"), ValueError,
         ["engine 'vllm2'", "simulated, transformers"]),
    Case("build gpu_bytes negative", lambda e: e.rago.build_controller(gpu_bytes=-1), ValueError,
         ["gpu_bytes", ">= 0"]),
    Case("build gpu_bytes float", lambda e: e.rago.build_controller(gpu_bytes=1.5), ValueError, ["gpu_bytes"]),
    Case("build no tier", lambda e: e.rago.build_controller(gpu_bytes=0, host_bytes=0), ValueError,
         ["both 0", "use_cache=False"]),
    Case("build unknown option", lambda e: e.rago.build_controller(colour="blue"), TypeError,
         ["unexpected arguments: colour"]),
    Case("build model_path", lambda e: e.rago.build_controller(engine="transformers", model_path=7), ValueError,
         ["model_path", "smollm2"]),
    Case("build storage_scale", lambda e: e.rago.build_controller(storage_scale=0), ValueError,
         ["storage_scale", "positive integer"]),
    Case("controller window nan", lambda e: RAGServeController(e.ctrl.engine, starvation_window_s=math.nan),
         ValueError, ["starvation_window_s", ">= 0"]),
    Case("controller pool", lambda e: RAGServeController(e.ctrl.engine, speculative_pool=-1), ValueError,
         ["speculative_pool", ">= 0"]),
    Case("controller insert tier", lambda e: RAGServeController(e.ctrl.engine, e.ctrl.cache, insert_tier="remote"),
         ValueError, ["insert_tier 'remote'", "gpu, host"]),
    Case("controller cache type", lambda e: RAGServeController(e.ctrl.engine, cache={}), TypeError,
         ["CacheBackend", "lacks"]),
    # KnowledgeTree
    Case("tree namespace None", lambda e: e.tree.match(None, ["a"]), TypeError, ["match: namespace", "str"]),
    Case("tree overflowing sizes", lambda e: e.tree.insert("m", ["x", "y"], [1, 1], [2**62, 2**62]), ValueError,
         ["'gpu'", "capacity is 1000"]),
    Case("tree tokens 2**63", lambda e: e.tree.insert("m", ["x"], [2**63], [1]), ValueError,
         ["doc_tokens[0]", "64-bit"]),
    Case("tree tier", lambda e: e.tree.insert("m", ["x"], [1], [1], tier="ssd"), ValueError,
         ["'ssd'", "gpu, host, remote"]),
    # KVCache
    Case("kvcache unallocatable", lambda e: KVCache({"gpu": 2**50}, policy="lru"), ValueError,
         ["gpu=1125899906842624 bytes", "storage_scale"]),
    Case("kvcache capacities type", lambda e: KVCache([("gpu", 10)], policy="lru"), TypeError, ["capacities"]),
    Case("kvcache payload size", lambda e: e.ctrl.cache.put("ns", ["p"], [1], [64 * e.ctrl.cache.storage_scale],
                                                            payloads=[np.zeros(3, np.uint8)]), ValueError,
         ["payloads[0] has 3 bytes", "storage_scale"]),
    Case("kvcache tier", lambda e: e.ctrl.cache.put("ns", ["p"], [1], [10], tier="remote"), ValueError,
         ["tier must be one of", "gpu"]),
    # BlockPool
    Case("pool block bytes", lambda e: BlockPool(0, 4), ValueError, ["block_bytes", "positive integer"]),
    Case("pool huge", lambda e: BlockPool(2**64, 1), ValueError, ["block_bytes", "64-bit"]),
    Case("pool free unknown", lambda e: e.pool.free([7]), ValueError, ["7"]),
    Case("pool allocate type", lambda e: e.pool.allocate("two"), TypeError, ["n", "integer"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_with_a_named_error_and_nothing_changes(env, case):
    before = snapshot(env)
    with pytest.raises(case.exc) as info:
        case.call(env)
    message = str(info.value)
    for w in case.words:
        assert w in message, (w, message)
    assert snapshot(env) == before


def test_the_table_covers_every_entry_point():
    assert len(CASES) >= 40
    covered = " ".join(c.name for c in CASES)
    for entry in ("config", "query", "batch", "staged", "build", "controller", "tree", "kvcache", "pool"):
        assert entry in covered


def test_gpu_bytes_zero_means_no_gpu_tier(env):
    ctrl = env.rago.build_controller(gpu_bytes=0, host_bytes=1 << 30)
    assert ctrl.cache.tiers == ["host"]
    r = ctrl.process(query())
    assert r.stored_docs == 2 and ctrl.process(query(query_id="again")).cached_tokens == 500


def hyperrag_cli():
    exe = shutil.which("hyperrag", path=str(__import__("pathlib").Path(sys.executable).parent)) or \
        shutil.which("hyperrag")
    assert exe, "the hyperrag console script is not installed (scripts/install.sh installs it)"
    return exe


CLI_CASES = [
    (["bench", "--load", "2"], "--load"),
    (["bench", "--zipf-alpha", "-1"], "--zipf-alpha"),
    (["optimize", "--plot", "/no/such/folder/x.png"], "--plot"),
    (["optimize", "--plot", "frontier.txt"], "--plot"),
    (["bench", "--out", "/proc/hyperrag-results"], "--out"),
    (["optimize", "--paradigm", "agentic"], "--paradigm"),
]


@pytest.mark.parametrize("argv, flag", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_bad_flags_exit_2_with_one_line(argv, flag):
    p = subprocess.run([hyperrag_cli(), *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in p.stderr, p.stderr
