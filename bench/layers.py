"""Per-layer latency of 2:4 SparseLinear vs dense cuBLAS vs PyTorch semi-structured on Llama linear shapes.

    python bench/layers.py --out bench/results/            # full grid (3 models, 19 M values)
    python bench/layers.py --quick --out /tmp/             # 3 shapes, 7 M values
    python bench/layers.py --tune --out bench/results/     # measure the crossover first (sparse-llm tune)
    python bench/layers.py --tables --out DIR              # the committed tuning tables, not the user's cache
    python bench/layers.py --shapes 1024x4096 1024x8192 --out DIR   # only these (N, K) of the grid

Writes ``layers[_quick].json`` (rows + ceilings + versions + git sha) into ``--out``; the logic lives in
``sparse_llm.benchmark`` (shared with ``sparse-llm bench layers``). Plot it with ``bench/plot_layers.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_tables_argument, apply_tables  # noqa: E402

from sparse_llm import benchmark, tune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="3 shapes and 7 M values")
    parser.add_argument("--tune", action="store_true", help="measure the Triton/cuSPARSELt crossover first")
    add_tables_argument(parser)
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph replay column")
    parser.add_argument("--no-streams", action="store_true", help="skip the stream column (layer copies back to back)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--shapes", nargs="*", default=None, help="NxK: only these shapes of the grid (in parts)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    shapes = benchmark.QUICK_SHAPES if args.quick else benchmark.LLAMA_SHAPES
    if args.shapes:
        shapes = benchmark.select_shapes(shapes, args.shapes)
    apply_tables(args.tables)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        entries = tune.tune(benchmark.distinct_shapes(shapes), dtype)
        (args.out / "crossover.json").write_text(json.dumps(entries, indent=1))
        for e in entries:
            print(f"tuned {e['n']}x{e['k']}: crossover M={e['crossover']}")
    name = "layers_quick.json" if args.quick else "layers_part.json" if args.shapes else "layers.json"

    def save(result: dict) -> None:  # after every shape, so a run cut short still leaves its rows
        result["crossover_table"] = tune.effective_table()
        (args.out / name).write_text(json.dumps(result, indent=1))

    result = benchmark.run(shapes, quick=args.quick, dtype=dtype, graphs=not args.no_graphs, checkpoint=save,
                             streams=not args.no_streams)
    save(result)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
