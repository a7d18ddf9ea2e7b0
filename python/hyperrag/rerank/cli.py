"""`hyperrag rerank index`: precompute a corpus's reranker KV into a directory.

The corpus is JSON lines, one document per line: {"doc_id": ..., "text": ...}
("id" is accepted for "doc_id"). Every line is checked while the command line
is parsed, so a bad corpus is one error line naming the line and field, before
the model loads. Serving then opens the same directory:
``KVReuseReranker(model, directory=DIR, codecs={"disk": CODEC})``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Tuple

CODECS = ("raw", "int8")
DTYPES = ("bfloat16", "float16", "float32")


def corpus_file(text: str) -> List[Tuple[str, str]]:
    """(doc_id, text) of every line of a JSON-lines corpus."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"corpus {text!r} is not a file")
    docs, seen = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read corpus {text!r}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{text}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise argparse.ArgumentTypeError(f"{text}:{number}: expected an object with doc_id and text")
        doc_id = row.get("doc_id", row.get("id"))
        if not isinstance(doc_id, str) or not doc_id:
            raise argparse.ArgumentTypeError(f"{text}:{number}: doc_id (or id) must be a non-empty string")
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise argparse.ArgumentTypeError(f"{text}:{number}: text must be a non-empty string")
        if doc_id in seen:
            raise argparse.ArgumentTypeError(f"{text}:{number}: doc_id {doc_id!r} appears twice")
        seen.add(doc_id)
        docs.append((doc_id, row["text"]))
    if not docs:
        raise argparse.ArgumentTypeError(f"corpus {text!r} holds no documents")
    return docs


def model_path(text: str) -> str:
    if text != "smollm2" and not (Path(text) / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Hugging Face model directory (no config.json); give a local directory or 'smollm2'")
    return text


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperrag.cli import output_dir, positive_int

    parser.add_argument("corpus", type=corpus_file, metavar="CORPUS.jsonl",
                        help='JSON lines: {"doc_id": ..., "text": ...} per document')
    parser.add_argument("--model", type=model_path, default="smollm2",
                        help="a local Hugging Face causal LM directory, or 'smollm2' (default)")
    parser.add_argument("--directory", type=output_dir, required=True,
                        help="where the KV files go (shared with the serving processes)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--codec", choices=CODECS, default="raw",
                        help="compression of the files: raw (exact) or int8 (about half the bytes)")
    parser.add_argument("--batch", type=positive_int, default=16, help="documents per forward pass")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_index(args: argparse.Namespace) -> int:
    from hyperrag.rerank import KVReuseReranker

    reranker = KVReuseReranker(args.model, dtype=args.dtype, directory=args.directory,
                               codecs={"disk": args.codec}, max_batch=args.batch)
    ids, texts = zip(*args.corpus)
    report = reranker.index(list(ids), list(texts), progress=True)
    per_doc = report.per_document()
    if args.json:
        print(json.dumps({**report.__dict__, "per_document": per_doc}, indent=2))
        return 0 if not report.failed else 1
    rate = report.computed / report.seconds if report.seconds > 0 else 0.0
    print(f"indexed {report.documents} documents into {args.directory}: {report.computed} computed "
          f"({rate:.1f} docs/s), {report.already_cached} already there")
    if report.computed:
        print(f"per document: {per_doc['raw_bytes'] / 2**20:.2f} MiB of {args.dtype} KV, "
              f"{per_doc['disk_bytes'] / 2**20:.2f} MiB on disk ({args.codec})")
    if report.failed:
        print(f"{len(report.failed)} documents were computed but could not be stored: {report.failed[:5]}")
        return 1
    return 0


def add_rerank_command(sub) -> None:
    """`hyperrag rerank ...` under the top-level subcommands."""
    rerank = sub.add_parser("rerank", help="decoder reranking with document-KV reuse")
    commands = rerank.add_subparsers(dest="rerank_command")
    index = commands.add_parser("index", help="precompute a corpus's reranker KV into a directory")
    add_index_arguments(index)
    index.set_defaults(func=run_index, command_parser=index)
    rerank.set_defaults(func=lambda args: rerank.error("a subcommand is required; allowed: index"))
