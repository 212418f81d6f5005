"""The ``sparse-llm`` command line: ``prune``, ``eval``, ``demo`` (and whatever else is registered).

A subcommand is one function taking the parsed arguments (returning an exit code or None) plus one
``register(...)`` line naming it, its help and a function that adds its arguments. A name with a space
(``"bench layers"``) becomes a nested subcommand.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sparse_llm.methods import METHODS


@dataclass
class Command:
    name: str
    run: Callable[[argparse.Namespace], int | None]
    configure: Callable[[argparse.ArgumentParser], None] | None
    help: str


COMMANDS: dict[str, Command] = {}


def register(
    name: str,
    run: Callable[[argparse.Namespace], int | None],
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    help: str = "",
) -> None:
    """Add subcommand ``name`` (words separated by spaces for nested ones) running ``run(args)``."""
    COMMANDS[name] = Command(name, run, configure, help)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every registered subcommand."""
    parser = argparse.ArgumentParser(prog="sparse-llm", description="Prune LLMs to 2:4 and run them sparse.")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(title="commands")}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    names = [tuple(c.name.split()) for c in COMMANDS.values()]
    for command in COMMANDS.values():
        words = tuple(command.name.split())
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in parsers:
                children = sorted({n[depth] for n in names if len(n) > depth and n[:depth] == prefix})
                help_ = f"{', '.join(children)} (see {' '.join(prefix)} -h)"
                parsers[prefix] = groups[prefix[:-1]].add_parser(prefix[-1], help=help_)
            if prefix not in groups:
                groups[prefix] = parsers[prefix].add_subparsers(title=f"{' '.join(prefix)} commands")
        sub = groups[words[:-1]].add_parser(words[-1], help=command.help, description=command.help)
        if command.configure is not None:
            command.configure(sub)
        sub.set_defaults(command_run=command.run)
        parsers[words] = sub
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sparse-llm`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command_run"):
        parser.print_help()
        return 2
    try:
        return args.command_run(args) or 0
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"sparse-llm: error: {err}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def versions() -> dict:
    """Versions of the software a report was made with."""
    import transformers

    import sparse_llm

    return {
        "sparse_llm": sparse_llm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _dtype(name: str, device: str) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M) or a local HF folder")
    parser.add_argument(
        "--dataset", default=None, help="wiki-offline (embedded, default), wikitext2, c4, or a .txt path"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")


def _add_eval_args(parser: argparse.ArgumentParser, default_windows: int = 32) -> None:
    parser.add_argument("--eval-windows", type=int, default=default_windows, help="evaluation windows (0: skip)")
    parser.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window length (default: --seqlen)")


def _load(args: argparse.Namespace):
    from sparse_llm.models import resolve_model

    device = _device(args.device)
    return resolve_model(args.model, dtype=_dtype(args.dtype, device), device=device)


def _evaluate(model, tokenizer, args: argparse.Namespace, seqlen: int) -> dict | None:
    from sparse_llm.data import eval_windows
    from sparse_llm.eval import perplexity

    if args.eval_windows <= 0:
        return None
    windows = eval_windows(tokenizer, seqlen, args.eval_windows, source=args.dataset)
    start = time.perf_counter()
    value = perplexity(model, windows, batch_size=args.batch_size, progress=True)
    return {
        "perplexity": value,
        "seqlen": seqlen,
        "windows": int(windows.shape[0]),
        "dataset": args.dataset or "wiki-offline",
        "time_s": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------------------
# prune


def _prune_args(parser: argparse.ArgumentParser) -> None:
    _add_model_args(parser)
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--sparsity", default="2:4", help="0.5 (unstructured), 2:4, 4:8, ...")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration window offsets")
    parser.add_argument("--include", action="append", default=None, help="regex of linear names to prune (repeat)")
    parser.add_argument("--exclude", action="append", default=None, help="regex of linear names to skip (repeat)")
    parser.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block")
    parser.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT damping, fraction of mean(diag H)")
    parser.add_argument("--out", default=None, help="folder to save the pruned model and prune_report.json in")
    _add_eval_args(parser)


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune a model, evaluate it, save it with its JSON report."""
    from sparse_llm.data import calibration_windows
    from sparse_llm.models import REPORT_FILE, save_pruned, write_json
    from sparse_llm.prune import prune

    options = {"blocksize": args.blocksize, "percdamp": args.percdamp} if args.method == "sparsegpt" else {}
    model, tokenizer = _load(args)
    calibration = None
    if METHODS[args.method].needs_calibration:
        calibration = calibration_windows(tokenizer, args.nsamples, args.seqlen, args.seed, source=args.dataset)
    report = prune(
        model,
        args.method,
        args.sparsity,
        calibration=calibration,
        include=args.include,
        exclude=args.exclude,
        batch_size=args.batch_size,
        progress=True,
        **options,
    )
    full = {
        "command": "prune",
        "model": str(args.model),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "calibration_dataset": args.dataset or "wiki-offline",
        "seed": args.seed,
        "prune": report,
        "eval": _evaluate(model, tokenizer, args, args.eval_seqlen or args.seqlen),
        "versions": versions(),
    }
    print(
        f"{report['method']} {report['sparsity']}: {report['num_layers']} linears, "
        f"mask sparsity {report['overall_mask_sparsity']:.4f}"
        + (f", N:M exact {report['nm_exact']}" if "nm_exact" in report else "")
        + f", {report['timings']['total_s']:.1f} s"
    )
    if full["eval"] is not None:
        print(f"perplexity {full['eval']['perplexity']:.3f} ({full['eval']['windows']}x{full['eval']['seqlen']})")
    if args.out:
        save_pruned(model, tokenizer, args.out, None)
        write_json(Path(args.out) / REPORT_FILE, full)
        print(f"saved to {args.out} (report: {Path(args.out) / REPORT_FILE})")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# eval


def _eval_args(parser: argparse.ArgumentParser) -> None:
    _add_model_args(parser)
    parser.add_argument("--seqlen", type=int, default=512, help="evaluation window length")
    parser.add_argument("--eval-windows", type=int, default=32, help="evaluation windows")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this path")


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity of a model (and the sparsity of its decoder-block linears)."""
    from sparse_llm.models import write_json
    from sparse_llm.prune import measure_sparsity

    args.eval_seqlen = None
    model, tokenizer = _load(args)
    result = {
        "command": "eval",
        "model": str(args.model),
        "eval": _evaluate(model, tokenizer, args, args.seqlen),
        "sparsity": measure_sparsity(model),
        "versions": versions(),
    }
    sparsity = result["sparsity"]
    print(
        f"perplexity {result['eval']['perplexity']:.3f} ({result['eval']['windows']}x{args.seqlen}); "
        f"decoder linears {sparsity['overall']:.4f} zeros, 2:4 in every layer: {sparsity['all_2to4']}"
    )
    if args.json:
        write_json(args.json, result)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# demo


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration and evaluation window length")
    parser.add_argument("--eval-windows", type=int, default=16, help="evaluation windows")
    parser.add_argument("--sparsity", default="2:4")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument(
        "--dataset", default=None, help="wiki-offline (embedded, default), wikitext2, c4, or a .txt path"
    )


def _layer_speedup() -> str:
    """One line on the measured 2:4 speedup of a Llama-2-7B-shaped layer, or why there is none."""
    if not torch.cuda.is_available():
        return "layer speedup: no CUDA GPU here (run `sparse-llm demo` on a GPU machine to measure it)"
    try:
        from sparse_llm import benchmark

        result = benchmark.run(
            shapes={"Llama-2-7B": [("q_proj", 4096, 4096)]}, ms=(1, 16, 2048), graphs=False, log=lambda *_: None
        )
    except Exception as err:  # the GPU backend may be missing on this machine: say so instead of failing the demo
        return f"layer speedup: GPU backend unavailable ({type(err).__name__}: {err})"
    rows = [r for r in result["rows"] if r["provider"] == "ours_auto" and r.get("speedup")]
    parts = ", ".join(f"M={r['m']}: {r['speedup']:.2f}x" for r in rows)
    device = torch.cuda.get_device_name()
    return f"layer speedup of 2:4 over dense bf16, 4096x4096 (Llama-2-7B q_proj) on {device}: {parts}"


def cmd_demo(args: argparse.Namespace) -> int:
    """Prune the embedded model with magnitude, Wanda and SparseGPT; print perplexity, sparsity check, time."""
    from sparse_llm.data import calibration_windows, eval_windows
    from sparse_llm.eval import perplexity
    from sparse_llm.models import load_default_model
    from sparse_llm.prune import measure_sparsity, prune

    start = time.perf_counter()
    model, tokenizer = load_default_model()
    print(f"embedded model SmolLM2-135M-Instruct loaded in {time.perf_counter() - start:.1f} s (fp32, CPU)")
    calibration = calibration_windows(tokenizer, args.nsamples, args.seqlen, seed=0, source=args.dataset)
    windows = eval_windows(tokenizer, args.seqlen, args.eval_windows, source=args.dataset)
    dense_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rows = [("dense", perplexity(model, windows, batch_size=args.batch_size), "-", 0.0)]
    print(f"dense perplexity {rows[0][1]:.2f} ({args.eval_windows}x{args.seqlen} windows)")
    for method in ("magnitude", "wanda", "sparsegpt"):
        model.load_state_dict(dense_state)
        report = prune(model, method, args.sparsity, calibration, batch_size=args.batch_size, progress=True)
        check = measure_sparsity(model)
        ok = check["all_2to4"] if args.sparsity == "2:4" else report.get("nm_exact", True)
        status = f"{check['overall']:.3f} zeros, {'OK' if ok else 'FAILED'}"
        rows.append(
            (method, perplexity(model, windows, batch_size=args.batch_size), status, report["timings"]["total_s"])
        )
    print(f"\n{args.sparsity} pruning of SmolLM2-135M, calibration {args.nsamples}x{args.seqlen}")
    print(f"{'method':<10} {'perplexity':>10}  {'sparsity check':<22} {'time (s)':>8}")
    for method, ppl, status, seconds in rows:
        print(f"{method:<10} {ppl:>10.2f}  {status:<22} {seconds:>8.1f}")
    print(_layer_speedup())
    return 0


def _tune_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="NxK",
        help="weight shapes out_features x in_features (default: every Llama linear shape of the layer benchmark)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument(
        "--ms",
        nargs="+",
        type=int,
        metavar="M",
        help="token counts to measure, powers of two (default: sparse_llm.tune.TUNE_MS, 1-2048); other M of a tuned "
        "shape stay as they are",
    )
    parser.add_argument(
        "--weigh-stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="choose the sparse tensor-core tile by its replay time and by its time in a stream of distinct copies of "
        "the layer back to back (the way a model runs; the default), or with --no-weigh-stream by the replay alone",
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from sparse_llm import benchmark, tune

    if args.shapes:
        shapes = [benchmark.parse_shape(s) for s in args.shapes]
    else:
        shapes = benchmark.distinct_shapes(benchmark.LLAMA_SHAPES)
    dtype = getattr(torch, args.dtype)  # tune.tune checks --ms (tune.check_ms) before it looks for a GPU
    for entry in tune.tune(shapes, dtype, args.ms or tune.TUNE_MS, weigh_stream=args.weigh_stream):
        # what the dispatcher now reads: the merged entry (buckets measured before and not now included)
        merged = tune.load_table().get(tune.entry_key(entry["gpu"], entry["n"], entry["k"], dtype), entry)
        buckets = sorted(merged["backends"].items(), key=lambda item: int(item[0]))
        chosen = ", ".join(f"M<={m}: {name}" for m, name in buckets)
        print(f"{entry['n']}x{entry['k']}: {chosen}; cuSPARSELt above M = {buckets[-1][0]}")
    print(f"crossover table: {tune.cache_path()}")
    return 0


def _bench_layers_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for layers[_quick].json")
    parser.add_argument("--quick", action="store_true", help="3 shapes and 7 M values")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])


def cmd_bench_layers(args: argparse.Namespace) -> int:
    import json

    from sparse_llm import benchmark

    result = benchmark.run(quick=args.quick, dtype=getattr(torch, args.dtype))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("layers_quick.json" if args.quick else "layers.json")
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {path}")
    return 0


register("prune", cmd_prune, _prune_args, "prune a model (magnitude, wanda, sparsegpt) and save it with a report")
register("eval", cmd_eval, _eval_args, "perplexity of a model and the sparsity of its linears")
register("demo", cmd_demo, _demo_args, "prune the embedded model three ways at 2:4 and compare (CPU, minutes)")
register("tune", cmd_tune, _tune_args, "measure which backend is fastest per shape and M on this GPU (cached)")
register("bench layers", cmd_bench_layers, _bench_layers_args, "per-layer latency: dense vs PyTorch 2:4 vs ours (GPU)")
