"""`hyperrag rerank index`: precompute a corpus's reranker KV, then serve from the directory."""
import json

import numpy as np
import pytest

from engine_fixtures import tiny_model_dir  # noqa: F401
from hyperrag.data import load_corpus, load_queries
from hyperrag.rerank import KVReuseReranker
from test_cli import run_hyperrag
from test_cli_errors import assert_one_line_error


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w") as f:
        for d in load_corpus()[:10]:
            f.write(json.dumps({"doc_id": d.doc_id, "text": d.text}) + "\n")
    return path


def test_index_reports_bytes_and_serving_reads_the_directory(tiny_model_dir, corpus_file, tmp_path):  # noqa: F811
    directory = tmp_path / "kv"
    args = ("rerank", "index", corpus_file, "--model", tiny_model_dir, "--directory", directory,
            "--dtype", "float32", "--codec", "int8")
    proc = run_hyperrag(*args)
    assert proc.returncode == 0, proc.stderr
    assert "indexed 10 documents" in proc.stdout and "10 computed" in proc.stdout
    assert "MiB on disk (int8)" in proc.stdout
    assert proc.stderr == ""  # piped: no progress bar (terminals only) and nothing from dependencies
    again = run_hyperrag(*args, "--json")
    report = json.loads(again.stdout)
    assert (report["computed"], report["already_cached"]) == (0, 10)

    rows = [json.loads(line) for line in corpus_file.read_text().splitlines()]
    ids, texts = [r["doc_id"] for r in rows], [r["text"] for r in rows]
    served = KVReuseReranker(str(tiny_model_dir), dtype="float32", directory=directory, codecs={"disk": "int8"})
    scores = served.score(load_queries(1)[0].text, ids, texts)
    assert served.stats().reused == 10 and served.store.stats().disk_hits == 11  # + the instruction
    full = KVReuseReranker(str(tiny_model_dir), dtype="float32", reuse=False)
    want = full.score(load_queries(1)[0].text, ids, texts)
    assert np.corrcoef(scores, want)[0, 1] > 0.9  # int8 KV: close to, not equal to, recomputation


@pytest.mark.parametrize("content,fragment", [
    ('{"doc_id": "a", "text": "x"}\nnot json\n', "corpus.jsonl:2: not JSON"),
    ('{"doc_id": 3, "text": "x"}\n', "corpus.jsonl:1: doc_id (or id) must be a non-empty string"),
    ('{"id": "a", "text": ""}\n', "corpus.jsonl:1: text must be a non-empty string"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "doc_id 'a' appears twice"),
    ('["a", "x"]\n', "expected an object"),
    ("\n", "holds no documents"),
])
def test_bad_corpus_is_one_line_naming_the_line(tmp_path, content, fragment):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    proc = run_hyperrag("rerank", "index", path, "--directory", tmp_path / "kv")
    assert_one_line_error(proc, 2, "hyperrag rerank index", "argument CORPUS.jsonl", fragment)
    assert not (tmp_path / "kv").exists()  # refused before any work


@pytest.mark.parametrize("extra,prefix,fragment", [
    (["--codec", "int4"], "hyperrag rerank index", "invalid choice: 'int4' (choose from 'raw', 'int8')"),
    (["--model", "{tmp}"], "hyperrag rerank index", "not a Hugging Face model directory"),
    (["--batch", "0"], "hyperrag rerank index", "--batch: must be a positive integer"),
    (["--bogus"], "hyperrag rerank index", "allowed: --help, --model, --directory"),
])
def test_bad_flags_are_one_line(corpus_file, tmp_path, extra, prefix, fragment):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    proc = run_hyperrag("rerank", "index", corpus_file, "--directory", tmp_path / "kv", *extra)
    assert_one_line_error(proc, 2, prefix, fragment)


def test_rerank_without_subcommand_names_the_allowed_one():
    assert_one_line_error(run_hyperrag("rerank"), 2, "hyperrag rerank", "allowed: index")
