"""Retune some shapes of a committed tuning table on this GPU, the other entries kept as they are.

    python bench/retune.py --out DIR [--table bench/results/crossover_h100.json] [--shapes 4096x4096 ...]
                           [--ms 1 2 4 ...] [--no-weigh-stream] [--deadline-s 300]

Seeds a fresh cache dir with ``--table`` (``common.use_tables``: the user's own cache stays untouched), runs
``sparse-llm tune``'s measurement (``tune.tune``) one shape at a time and after each writes ``DIR/crossover.json``
(the table's entries as a list, as the committed tables hold them, this GPU's entries of the tuned shapes replaced)
and ``DIR/measurements.json`` (the run's environment and settings, and the tuned entries with every time
measured). ``--ms``: the token counts measured (default ``tune.TUNE_MS``); buckets not measured keep the table's
choice, as ``sparse-llm tune --ms`` does.
``--deadline-s``: start no new shape after that many seconds, so a device call with a time limit still returns the
shapes it finished (named on stdout). A table committed from ``DIR/crossover.json`` goes into ``bench/results`` and,
as the package ships it, into ``sparse_llm/tables`` (``tests/test_tune.py`` checks that the two agree).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, use_tables, write_result  # noqa: E402

from sparse_llm import tune  # noqa: E402
from sparse_llm.benchmark import LLAMA_SHAPES, distinct_shapes, parse_shape  # noqa: E402


def as_list(table: dict) -> list[dict]:
    """The cache file's entries (keyed by ``tune.entry_key``) as the committed tables list them: by GPU, N, K."""
    return sorted(table.values(), key=lambda e: (e["gpu"], e["n"], e["k"], e["dtype"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--table", type=Path, default=RESULTS / "crossover_h100.json")
    ap.add_argument("--shapes", nargs="*", default=None, help="NxK (default: every Llama shape of the grid)")
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--weigh-stream", action=argparse.BooleanOptionalAction, default=True,
                    help="as sparse-llm tune (the default; --no-weigh-stream: the replay alone)")  # fmt: skip
    ap.add_argument("--ms", type=int, nargs="+", default=None, help="token counts to tune (default: tune.TUNE_MS)")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no new shape after this many seconds")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("retune.py measures kernels on a GPU: no CUDA device is visible")
    if not args.table.is_file():
        raise SystemExit(f"--table {args.table}: no such file")
    shapes = [parse_shape(s) for s in args.shapes] if args.shapes else distinct_shapes(LLAMA_SHAPES)
    try:
        ms = tune.check_ms(args.ms) if args.ms else tune.TUNE_MS
    except ValueError as err:
        raise SystemExit(f"--ms: {err}") from None
    start = time.monotonic()
    use_tables([args.table])
    path = tune.cache_path()  # in the fresh cache dir use_tables set
    args.out.mkdir(parents=True, exist_ok=True)
    done, measured = [], []
    for n, k in shapes:
        if args.deadline_s is not None and time.monotonic() - start > args.deadline_s:
            print(f"deadline: {n}x{k} and the rest not tuned", flush=True)
            break
        t0 = time.monotonic()
        entries = tune.tune([(n, k)], getattr(torch, args.dtype), ms, path=path, weigh_stream=args.weigh_stream)
        measured += entries
        done.append(f"{n}x{k}")
        (args.out / "crossover.json").write_text(json.dumps(as_list(tune.load_table(path)), indent=1))
        settings = {"table": str(args.table), "weigh_stream": args.weigh_stream, "ms": list(ms), "shapes": done}
        write_result(args.out, "measurements", {**settings, "entries": measured})
        print(f"tuned {n}x{k} in {time.monotonic() - t0:.0f} s", flush=True)
    print(f"retuned {len(done)} of {len(shapes)} shapes: {' '.join(done)}; wrote {args.out / 'crossover.json'}")


if __name__ == "__main__":
    main()
