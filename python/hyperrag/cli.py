"""The `hyperrag` command: `optimize` (schedule search), `bench` (serving benchmark),
`rerank index` (precompute a corpus's reranker KV) and `serve` (OpenAI-compatible HTTP server).

Bad input never shows a traceback: every rejected flag or value is one line on
stderr, `hyperrag <subcommand>: error: ...`, and exit status 2; a failed write
of an output file is one such line and exit status 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Tuple

PLACEMENT_MARKERS = {"collocated": "o", "disaggregated": "s", "hybrid": "^"}


def fail(prog: str, message: str, status: int = 2) -> NoReturn:
    """Print ``prog: error: message`` as one line on stderr and exit with ``status``."""
    print(f"{prog}: error: {' '.join(str(message).splitlines())}", file=sys.stderr)
    raise SystemExit(status)


class Parser(argparse.ArgumentParser):
    """argparse whose own errors (unknown flag, bad type, invalid choice) are one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


# ------------------------------------------------- value checks (argparse types)
# Each runs while the command line is parsed, so a bad value is refused before any work starts;
# argparse prefixes the message with the flag ("argument --load: ...").
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _float(text: str) -> float:
    """The number, or NaN (which every range check refuses) when ``text`` is not one."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive_float(text: str) -> float:
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A fraction strictly inside (0, 1), as bench.arrival_rate requires: at load 1 the baseline's
    queue would grow without bound."""
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), e.g. 0.6, got {text!r}")
    return value


def _writable_dir(folder: Path, creates_folder: bool = False) -> None:
    """Refuse ``folder`` unless a scratch file (or, when the output needs new folders in it, a scratch
    folder) can be made there and removed: os.access says yes to root and on read-only pseudo-filesystems."""
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(
            f"{str(folder)!r} is not a folder" if folder.exists() else f"folder {str(folder)!r} does not exist")
    try:
        if creates_folder:
            os.rmdir(tempfile.mkdtemp(prefix=".hyperrag-probe-", dir=folder))
        else:
            with tempfile.TemporaryFile(prefix=".hyperrag-probe-", dir=folder):
                pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} is not writable ({exc.strerror})") from None


def png_file(text: str) -> str:
    """A .png path in an existing, writable folder."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must be a file name ending in .png, got {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name ending in .png")
    _writable_dir(path.parent)
    if path.is_file():
        try:
            open(path, "ab").close()  # appends nothing: only asks whether the file may be overwritten
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"file {text!r} is not writable ({exc.strerror})") from None
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError("needs matplotlib: pip install 'dv-hyperrag[plot]'")
    return text


def output_dir(text: str) -> str:
    """A folder that exists or can be created (its nearest existing ancestor is a writable folder);
    kept a str, as bench writes its options into the JSON."""
    if not text:
        raise argparse.ArgumentTypeError("must be a folder path, got ''")
    folder = existing = Path(text)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _writable_dir(existing, creates_folder=existing != folder)
    return text


def _preset(lookup, text: str) -> str:
    """``text`` if ``lookup`` (the library's own case-insensitive preset resolver) knows it."""
    try:
        lookup(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def model_name(text: str) -> str:
    from hyperrag.models import LLMModel

    return _preset(LLMModel.from_name, text)


def gpu_name(text: str) -> str:
    from hyperrag.hardware import get_gpu

    return _preset(get_gpu, text)


# ------------------------------------------------------------------ optimize
def add_optimize_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperrag.plan import PARADIGMS

    parser.add_argument("--paradigm", default="hyperscale", choices=tuple(PARADIGMS), help="workload paradigm")
    parser.add_argument("--model", type=model_name, default=None,
                        help="model preset, e.g. llama-3.1-8b (default: the paradigm's)")
    parser.add_argument("--gpu", type=gpu_name, default="H100", help="accelerator preset, e.g. H100, A100-80GB, L40S")
    parser.add_argument("--gpu-budget-gb", type=positive_float, default=4.0,
                        help="KV cache capacity in GPU memory (GB)")
    parser.add_argument("--host-budget-gb", type=positive_float, default=16.0,
                        help="KV cache capacity in host memory (GB)")
    parser.add_argument("--qps-target", type=positive_float, default=None, help="required queries/s per chip")
    parser.add_argument("--ttft-slo-ms", type=positive_float, default=None, help="TTFT limit in milliseconds")
    parser.add_argument("--plot", type=png_file, metavar="FILE.png", default=None,
                        help="draw TTFT vs QPS/chip to this PNG (its folder must exist)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")


def run_optimize(args: argparse.Namespace) -> int:
    from hyperrag.plan import RAGOptimize, RAGOptimizeConfig

    config = RAGOptimizeConfig(
        paradigm=args.paradigm, model=args.model, gpu=args.gpu, gpu_budget_gb=args.gpu_budget_gb,
        host_budget_gb=args.host_budget_gb, qps_target=args.qps_target,
        ttft_slo_s=None if args.ttft_slo_ms is None else args.ttft_slo_ms / 1e3)
    result = RAGOptimize(config).optimize()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_frontier(result)
    if args.plot:
        plot_frontier(result, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def print_frontier(result) -> None:
    from rich.console import Console

    from hyperrag.terminal_table import print_table

    c = result.config
    headers = ("", "gpus", "batch", "hit rate", "TTFT ms", "QPS/chip", "GB/GPU", "placement")
    rows = [("*" if s is result.best else "", str(s.num_gpus), str(s.batch_size), f"{s.hit_rate_target:.0%}",
             f"{s.ttft_s * 1e3:.1f}", f"{s.qps_per_chip:.2f}", f"{s.memory_per_gpu_gb:.1f}", s.placement)
            for s in result.frontier]
    print_table(f"Pareto frontier: {c.paradigm}, {c.model.name} on {c.gpu.name} "
                f"({sum(s.fits for s in result.candidates)}/{len(result.candidates)} candidates fit; * best)",
                headers, rows, justify=("right",) * 7 + ("left",))
    Console().print(result.summary(), markup=False, highlight=False)


def plot_frontier(result, path: str) -> None:
    """TTFT (log scale) vs QPS/chip: every fitting candidate by placement, the frontier as a line, best starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.config
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    fitting = [s for s in result.candidates if s.fits]
    for placement, marker in PLACEMENT_MARKERS.items():
        pts = [s for s in fitting if s.placement == placement]
        if pts:
            ax.scatter([s.qps_per_chip for s in pts], [s.ttft_s * 1e3 for s in pts], marker=marker, s=28,
                       color="0.65", label=f"{placement} placement ({len(pts)} schedules)")
    front = sorted(result.frontier, key=lambda s: s.qps_per_chip)
    ax.plot([s.qps_per_chip for s in front], [s.ttft_s * 1e3 for s in front], "-o", color="tab:red", ms=5,
            lw=1.5, label=f"Pareto frontier ({len(front)} schedules)")
    b = result.best
    ax.scatter([b.qps_per_chip], [b.ttft_s * 1e3], marker="*", s=260, color="tab:blue", zorder=5,
               label=f"best: {b.num_gpus} GPUs, batch {b.batch_size}, hit rate {b.hit_rate_target:.0%}, "
                     f"{b.placement}")
    if c.qps_target is not None:
        ax.axvline(c.qps_target, color="tab:green", ls="--", lw=1, label=f"QPS target {c.qps_target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("QPS per chip (higher is better)")
    ax.set_ylabel("TTFT, ms (log scale, lower is better)")
    ax.set_title(f"{c.paradigm}: {c.model.name} on {c.gpu.name}, "
                 f"cache {c.gpu_budget_gb:g} GB GPU + {c.host_budget_gb:g} GB host")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ serve
SERVER_MODULES = ("fastapi", "uvicorn", "prometheus_client")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MB = 10**6  # --gpu-mb/--host-mb: decimal, as the planner's GB budgets


def model_source(text: str) -> str:
    """'smollm2' (the packaged model) or a local Hugging Face directory holding config.json."""
    if text != "smollm2" and not (Path(text) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"must be 'smollm2' or a Hugging Face model directory (holding "
                                         f"config.json), got {text!r}")
    return text


def host_address(text: str) -> str:
    try:
        socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise argparse.ArgumentTypeError(f"must be an address or host name this machine can resolve, "
                                         f"e.g. 127.0.0.1 or 0.0.0.0, got {text!r}") from None
    return text


def port_number(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 65535] (0: any free port), got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def megabytes(text: str) -> int:
    """A budget in MB (decimal), returned in bytes."""
    value = _float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of MB >= 0 (0: no such tier), got {text!r}")
    return int(value * MB)


def redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(f"must be a redis://, rediss:// or unix:// URL, got {text!r}")
    if importlib.util.find_spec("redis") is None:
        raise argparse.ArgumentTypeError("needs redis-py: pip install 'dv-hyperrag[remote]'")
    return text


def torch_device(text: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' naming a device this machine has."""
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index:
        return text
    if kind != "cuda" or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    import torch

    count = torch.cuda.device_count()
    if int(index or 0) >= count:
        raise argparse.ArgumentTypeError(f"{text!r} is not available: this machine has {count} CUDA device(s)")
    return text


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperrag.engines.approximate_reuse import RECOMPUTE_POLICIES, REUSE_MODES
    from hyperrag.serve.controller import DOC_ORDERS

    parser.add_argument("--model", type=model_source, required=True,
                        help="'smollm2' or a local Hugging Face model directory; also the served model name")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="weights and KV dtype (default bfloat16)")
    parser.add_argument("--device", type=torch_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--host", type=host_address, default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000; 0: any free)")
    parser.add_argument("--max-tokens", type=positive_int, default=128,
                        help="answer length of requests that set no max_tokens (default 128)")
    parser.add_argument("--max-tokens-limit", type=positive_int, default=None,
                        help="largest max_tokens a request may ask (default: the model's context window)")
    parser.add_argument("--doc-order", default="retrieval", choices=DOC_ORDERS,
                        help="prompt documents as sent, or in the order with the longest cached prefix")
    parser.add_argument("--reuse", default="exact", choices=REUSE_MODES,
                        help="exact: outputs equal a full prefill; approximate: faster, outputs may differ")
    parser.add_argument("--recompute-policy", default=None, choices=RECOMPUTE_POLICIES,
                        help="with --reuse approximate: which re-positioned tokens to recompute "
                             "(default: the controller's)")
    parser.add_argument("--recompute-budget", type=unit_fraction, default=None,
                        help="with --reuse approximate: share of re-positioned tokens recomputed, in [0, 1] "
                             "(default: the controller's; 0 with policy none)")
    parser.add_argument("--gpu-mb", type=megabytes, default=None,
                        help="KV cache budget of the fastest tier in MB (default: the planner's; 0: none)")
    parser.add_argument("--host-mb", type=megabytes, default=None,
                        help="KV cache budget in host memory in MB (default: the planner's; 0: none)")
    parser.add_argument("--remote", type=redis_url, default=None, metavar="URL",
                        help="share document KV with other servers through this Redis (redis://host:port/db)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                        help="server log level; info logs every request (default info)")


def serve_options(args: argparse.Namespace) -> dict:
    """build_controller options of the flags that must agree with each other; ValueError when they do not
    (raised before the model loads)."""
    from hyperrag.engines.approximate_reuse import ApproximateReuse
    from hyperrag.serve.controller import RAGServeController

    options = {"default_output_tokens": args.max_tokens, "doc_order": args.doc_order, "reuse": args.reuse}
    if args.max_tokens_limit is not None and args.max_tokens > args.max_tokens_limit:
        raise ValueError(f"--max-tokens {args.max_tokens} exceeds --max-tokens-limit {args.max_tokens_limit}")
    if args.gpu_mb == 0 and args.host_mb == 0:
        raise ValueError("--gpu-mb and --host-mb are both 0: no tier to cache in; allowed: at least one > 0")
    options.update({name: value for name, value in (("gpu_bytes", args.gpu_mb), ("host_bytes", args.host_mb),
                                                    ("remote", args.remote)) if value is not None})
    tuned = {name: value for name, value in (("recompute_policy", args.recompute_policy),
                                             ("recompute_budget", args.recompute_budget)) if value is not None}
    if tuned and args.reuse != "approximate":
        raise ValueError(f"--{next(iter(tuned)).replace('_', '-')} needs --reuse approximate")
    if tuned.get("recompute_policy") == "none":
        tuned.setdefault("recompute_budget", 0.0)  # policy none recomputes nothing: its only budget
    if tuned:
        defaults = inspect.signature(RAGServeController).parameters
        ApproximateReuse(*(tuned.get(name, defaults[name].default)  # ValueError if they do not fit
                           for name in ("recompute_policy", "recompute_budget")))
    options.update(tuned)
    return options


def run_serve(args: argparse.Namespace) -> int:
    options = serve_options(args)
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"needs {', '.join(missing)}: pip install 'dv-hyperrag[server]'")
    from hyperrag.serve.http_server import bind, serve

    try:  # before the model loads, so a taken port fails at once
        listener = bind(args.host, args.port)
    except OSError as exc:
        raise ValueError(f"argument --port: {exc.strerror}") from None
    import torch

    from hyperrag.plan import RAGOptimize, RAGOptimizeConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    controller = RAGOptimize(RAGOptimizeConfig()).build_controller(
        engine="transformers", model_path=args.model, engine_kwargs={"dtype": args.dtype, "device": args.device},
        **options)
    window = controller.engine.max_context
    if args.max_tokens > window:
        raise ValueError(f"--max-tokens {args.max_tokens} exceeds the model's context window of {window} tokens")
    serve(controller, args.host, listener.getsockname()[1], model_name=args.model, listener=listener,
          max_tokens_limit=args.max_tokens_limit, log_level=args.log_level,
          ready=lambda url: print(f"serving {args.model} on {url}", flush=True))
    return 0


# ------------------------------------------------------------------ command
def build_parser() -> Tuple[Parser, Dict[str, Parser]]:
    """The `hyperrag` parser and its subcommands' parsers by name."""
    from hyperrag import __version__

    parser = Parser(prog="hyperrag", description="KV-cache optimization for RAG serving")
    parser.add_argument("--version", action="version", version=f"hyperrag {__version__}")
    sub = parser.add_subparsers(dest="command")  # not required=True: main names the allowed subcommands
    opt = sub.add_parser("optimize", help="Pareto schedule search for a workload")
    add_optimize_arguments(opt)
    opt.set_defaults(func=run_optimize)
    # The serving side owns the benchmark's options and runner.
    from hyperrag.serve.cli import add_bench_arguments, run_bench

    bench = sub.add_parser("bench", help="baseline vs HyperRAG TTFT per paradigm (simulated engine)")
    add_bench_arguments(bench)
    bench.set_defaults(func=run_bench)
    from hyperrag.rerank.cli import add_rerank_command

    add_rerank_command(sub)
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server with document KV reuse")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)
    return parser, sub.choices


def _flags(parser: argparse.ArgumentParser) -> str:
    return ", ".join(s for action in parser._actions for s in action.option_strings if s.startswith("--"))


def main(argv: Optional[List[str]] = None) -> int:
    parser, commands = build_parser()
    # Unknown flags are collected rather than refused by the top-level parser, so that the
    # error names the subcommand and lists its flags.
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        unknown = f" (unrecognized: {' '.join(extra)})" if extra else ""
        parser.error(f"a subcommand is required; allowed: {', '.join(commands)}{unknown}")
    command = getattr(args, "command_parser", None) or commands[args.command]  # nested: the leaf's parser
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}; allowed: {_flags(command)}")
    try:
        return args.func(args)
    except ValueError as exc:  # the options are valid one by one but not together (e.g. model too big for gpu)
        command.error(str(exc))
    except OSError as exc:  # writing an output file failed after the run
        fail(command.prog, str(exc), status=1)


if __name__ == "__main__":
    raise SystemExit(main())
