"""Approximate document reuse vs exact reuse vs a prefix cache: TTFT and answer quality, side by side.

SmolLM2-135M on CPU, float32 by default: in bf16 any change of forward shapes (even exact
reuse of the system prompt) flips near-tied first tokens, which would blur what the
approximation itself changes. Systems, on one loaded model and the same token ids:
  no_reuse      every prompt prefilled from scratch (the quality reference)
  prefix_cache  a token-level prefix cache (radix tree over token ids, LRU): vLLM's / SGLang's reuse
  exact         HyperRAG, exact reuse (a cached prefix of documents), retrieval order
  <policy>@<budget>  HyperRAG, reuse="approximate": every document with a stored form is
                reused wherever it stands; that share of the re-positioned tokens is
                recomputed, chosen by the policy (none, first_k, deviation)
Streams: "norepeat" (documents drawn Zipf 1.1 over 300, top-3, a fresh question every
query) and "bundled" (the bundled queries, top-3 of an exact MiniLM + FAISS search).
Documents stay in retrieval order for every system, so an answer differs from the
reference only through the approximation. Every stream runs --passes times from cold
caches, the systems interleaved query by query; a query's TTFT is its median over passes.

Quality per system, against no_reuse on the same prompt (first pass): the share of
queries whose first greedy token agrees, whose 16 greedy tokens all agree, the mean
share of agreeing tokens, and the KL divergence of the first-token distribution
(over the reference's 1,000 most likely tokens, which hold nearly all its mass; a
token missing from the other's top 1,000 is given its 1,000th logit). The bundled
set labels target documents, not answers, so answer accuracy is not measured.

    python bench/bench_approx_reuse.py [--queries 80] [--passes 2] [--dtype float32]
Writes bench/results/bench_approx_reuse.json and bench/results/approx_reuse_frontier.png.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from hyperrag import RAGOptimize, RAGOptimizeConfig
from hyperrag.data import load_corpus
from hyperrag.engines.transformers_engine import TransformersEngine
from hyperrag.retrieval import FaissRetriever, MiniLMEmbedder
from hyperrag.serve import Query
from hyperrag.serve import bench as B

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_ttft import add_common_arguments, bundled_stream, norepeat_stream, repeat_rates  # noqa: E402
from token_prefix_cache import TokenPrefixCache  # noqa: E402

ANSWER_TOKENS = 16
TOP = 1000
APPROXIMATE = (("none", 0.0), ("first_k", 0.05), ("first_k", 0.15), ("deviation", 0.05), ("deviation", 0.15),
               ("deviation", 0.3), ("deviation", 0.5))


def systems(rago, engine, args):
    budgets = dict(default_output_tokens=ANSWER_TOKENS, gpu_bytes=args.gpu_mb << 20, host_bytes=args.host_mb << 20)
    out = {"no_reuse": rago.build_controller(engine=engine, use_cache=False, default_output_tokens=ANSWER_TOKENS),
           "exact": rago.build_controller(engine=engine, **budgets)}
    for policy, budget in APPROXIMATE:
        out[f"{policy}@{budget:.0%}"] = rago.build_controller(engine=engine, reuse="approximate",
                                                               recompute_policy=policy, recompute_budget=budget,
                                                               **budgets)
    return out


def kl_first_token(reference, other):
    """KL(reference || other) of the first-token distributions from their top-k logits
    (each normalised over its own top k; a token outside the other's top k gets its k-th logit)."""
    ref, oth = dict(reference), dict(other)
    floor = min(oth.values())
    ids = list(ref)
    log_p = torch.log_softmax(torch.tensor([ref[i] for i in ids]), -1)
    log_q = torch.tensor([oth.get(i, floor) for i in ids]) - torch.logsumexp(torch.tensor(list(oth.values())), -1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def one_pass(engine, rago, stream, texts, args):
    prefix = TokenPrefixCache(engine, (args.gpu_mb + args.host_mb) << 20)
    ctrls = systems(rago, engine, args)
    rows = []
    for i, (question, docs) in enumerate(stream):
        doc_texts = [texts[d] for d in docs]
        prompt = engine.prompt(docs, doc_texts=doc_texts, question=question)
        row = {"doc_tokens": sum(prompt.segment_tokens[1:])}
        ids = [t for seg in prompt.token_ids for t in seg] + list(prompt.question_ids)
        r = prefix.prefill(ids)
        row["prefix_cache"] = {"ttft_s": r.ttft_s, "reused_doc_tokens": min(
            row["doc_tokens"], max(0, r.cached_tokens - prompt.segment_tokens[0]))}
        for name, ctrl in ctrls.items():
            res = ctrl.process(Query(f"q{i}", question, list(docs), doc_texts=doc_texts, top_logits=TOP))
            reused = max(0, res.cached_tokens - (prompt.segment_tokens[0] if res.cached_tokens else 0))
            row[name] = {"ttft_s": res.ttft_s, "reused_doc_tokens": reused, "recomputed": res.recomputed_tokens,
                         "tokens": res.output_token_ids, "top": res.top_logits, "matched_docs": res.matched_docs}
        rows.append(row)
    return rows


def summarize(passes, names):
    first = passes[0]
    n = len(first)
    total_doc = sum(r["doc_tokens"] for r in first)
    out = {}
    for name in names:
        t = np.array([statistics.median(p[i][name]["ttft_s"] for p in passes) for i in range(n)])
        s = {"mean_s": float(t.mean()), "median_s": float(np.median(t)), "p90_s": float(np.percentile(t, 90)),
             "doc_token_reuse_rate": sum(r[name]["reused_doc_tokens"] for r in first) / total_doc}
        if name != "prefix_cache":
            s["recomputed_share"] = sum(r[name].get("recomputed", 0) for r in first) / total_doc
            ref = [r["no_reuse"]["tokens"] for r in first]
            got = [r[name]["tokens"] for r in first]
            s["first_token_agreement"] = sum(a[0] == b[0] for a, b in zip(ref, got)) / n
            s["all_tokens_agreement"] = sum(a == b for a, b in zip(ref, got)) / n
            s["token_agreement"] = statistics.mean(sum(x == y for x, y in zip(a, b)) / len(a) for a, b in zip(ref, got))
            kls = [kl_first_token(r["no_reuse"]["top"], r[name]["top"]) for r in first]
            s["first_token_kl_mean"] = statistics.mean(kls)
            s["first_token_kl_p90"] = float(np.percentile(kls, 90))
        out[name] = s
    return out


def frontier_png(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(max(9, 6 * len(results)), 5.2), squeeze=False)
    for ax, (stream, res) in zip(axes[0], results.items()):
        exact = res["exact"]["mean_s"]
        for k, (name, s) in enumerate(res.items()):
            if name == "prefix_cache":
                continue
            speedup = exact / s["mean_s"]
            marker = "o" if "@" in name else ("s" if name == "exact" else "^")
            ax.scatter(speedup, 100 * s["first_token_agreement"], marker=marker, s=50)
            ax.annotate(name, (speedup, 100 * s["first_token_agreement"]), textcoords="offset points",
                        xytext=(5, 4 if k % 2 else -11), fontsize=8)  # alternate: neighbours' labels apart
        ax.axhline(95, color="grey", lw=0.8, ls="--")
        ax.axvline(2, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("mean TTFT speed-up over exact reuse (x, higher is faster)")
        ax.set_ylabel("queries whose first greedy token equals a full prefill's (%)")
        ax.set_title(f"{stream}: target is the top right of the dashed lines")
        ax.grid(alpha=0.3)
    fig.suptitle("Approximate reuse on SmolLM2-135M (CPU): speed vs agreement with a full prefill\n"
                 "policy@budget = recompute policy and share of re-positioned tokens recomputed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=80)
    ap.add_argument("--passes", type=int, default=2)
    add_common_arguments(ap)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus()
    texts = {d.doc_id: d.text for d in corpus}
    engine = TransformersEngine(args.model, dtype=args.dtype)
    rago = RAGOptimize(RAGOptimizeConfig())
    rago.optimize()
    streams = {}
    if "norepeat" in args.streams:
        streams["norepeat"] = norepeat_stream(args.queries, texts, args.seed)
    if "bundled" in args.streams:
        retriever = FaissRetriever(MiniLMEmbedder(), [d.title + ". " + d.text for d in corpus],
                                   [d.doc_id for d in corpus])
        streams["bundled"] = bundled_stream(args.queries, texts, retriever)
    names = ["no_reuse", "prefix_cache", "exact"] + [f"{p}@{b:.0%}" for p, b in APPROXIMATE]
    results, rows, repeats = {}, [], {}
    for stream_name, stream in streams.items():
        passes = []
        for p in range(args.passes):
            passes.append(one_pass(engine, rago, stream, texts, args))
            print(f"  {stream_name}: pass {p + 1}/{args.passes} done", flush=True)
        results[stream_name] = summarize(passes, names)
        repeats[stream_name] = {**repeat_rates(stream), "repeated_document_rate": document_repeats(stream)}
        B.print_table(f"{stream_name}: {len(stream)} queries, {args.passes} passes (repeated questions "
                      f"{repeats[stream_name]['repeated_question_rate']:.0%}, document occurrences seen before "
                      f"{repeats[stream_name]['repeated_document_rate']:.0%})",
                      [{"system": k, **dict.fromkeys(QUALITY, float("nan")), **v}
                       for k, v in results[stream_name].items()], COLUMNS)
        rows += [{"stream": stream_name, "query": i, "system": name, "ttft_s": passes[0][i][name]["ttft_s"],
                  "reused_doc_tokens": passes[0][i][name]["reused_doc_tokens"]}
                 for i in range(len(stream)) for name in names]
    png = Path(__file__).resolve().parent / "results" / "approx_reuse_frontier.png"
    frontier_png(results, png)
    target = {s: [n for n, v in r.items() if "@" in n and v["mean_s"] * 2 <= r["exact"]["mean_s"]
                  and v["first_token_agreement"] >= 0.95] for s, r in results.items()}
    print("policies meeting the target (mean TTFT <= exact / 2 and first-token agreement >= 95%):", target)
    path = B.write_json("bench_approx_reuse", rows, vars(args), engine="transformers",
                        summary={"systems": results, "repeats": repeats, "target_met_by": target,
                                 "threads": torch.get_num_threads(), "frontier_png": png.name})
    print("wrote", path, "and", png)


def document_repeats(stream):
    seen, repeated, total = set(), 0, 0
    for _, docs in stream:
        for d in docs:
            repeated += d in seen
            total += 1
            seen.add(d)
    return repeated / total


QUALITY = ("recomputed_share", "first_token_agreement", "all_tokens_agreement", "first_token_kl_mean")
COLUMNS = (("system", "system", "s"), ("mean", "mean_s", B.ms), ("p90", "p90_s", B.ms),
           ("doc reuse", "doc_token_reuse_rate", ".0%"), ("recomp", "recomputed_share", ".0%"),
           ("1st tok", "first_token_agreement", ".0%"), ("16 tok", "all_tokens_agreement", ".0%"),
           ("KL", "first_token_kl_mean", ".3f"))

if __name__ == "__main__":
    main()
