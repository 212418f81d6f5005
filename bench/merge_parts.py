"""Merge the ``layers_part.json`` files of a grid run in parts (``bench/layers.py --shapes ...``) into one grid.

    python bench/merge_parts.py DIR/*/layers_part.json --out bench/results/h200/layers_c53cba7.json

The rows are concatenated (a shape in two parts is an error), the summary is recomputed over all of them with
``sparse_llm.benchmark.summarize``, and each part's environment and ceilings are kept (``parts``): the parts of
one grid must come from one commit and one GPU, else the merge refuses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparse_llm import benchmark

SUMMARY_COLUMNS = {
    "eager": ("ours_auto", "speedup"),
    "graph": ("ours_auto", "graph_speedup"),
    "stream": ("ours_auto", "stream_speedup"),
    "torch_semi_eager": ("torch_semi", "speedup"),
    "torch_semi_graph": ("torch_semi", "graph_speedup"),
}


def merge(parts: list[dict], names: list[str]) -> dict:
    if not parts:
        raise ValueError("no parts to merge")
    for key in ("git_sha", "gpu"):
        seen = {p["env"].get(key) for p in parts}
        if len(seen) > 1:
            raise ValueError(f"the parts differ in {key}: {sorted(map(str, seen))}; a grid is one commit on one GPU")
    rows, shapes, owner = [], {}, {}
    for part, name in zip(parts, names, strict=True):
        for shape, layers in part["shapes"].items():
            if shape in owner:
                raise ValueError(f"shape {shape} is in both {owner[shape]} and {name}")
            owner[shape] = name
            shapes[shape] = layers
        rows += part["rows"]
    return {
        "env": parts[0]["env"],
        "ceilings": parts[0]["ceilings"],
        "shapes": shapes,
        "rows": rows,
        "summary": {key: benchmark.summarize(rows, *col) for key, col in SUMMARY_COLUMNS.items()},
        "crossover_table": parts[0].get("crossover_table"),
        "parts": [
            {"file": name, "env": p["env"], "ceilings": p["ceilings"], "shapes": list(p["shapes"])}
            for p, name in zip(parts, names, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", type=Path, nargs="+", help="layers_part.json files")
    parser.add_argument("--out", type=Path, required=True, help="the merged grid's JSON file")
    args = parser.parse_args()
    for path in args.parts:
        if not path.is_file():
            raise SystemExit(f"no such part: {path}")
    result = merge([json.loads(p.read_text()) for p in args.parts], [str(p) for p in args.parts])
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out} ({len(result['shapes'])} shapes, {len(result['rows'])} rows)")


if __name__ == "__main__":
    main()
