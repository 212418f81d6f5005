"""Merge the ``layers_part.json`` files of a grid run in parts (``bench/layers.py --shapes ...``) into one grid.

    python bench/merge_parts.py DIR/*/layers_part.json --out bench/results/h200/layers_c53cba7.json

The logic is ``sparse_llm.benchmark.merge_parts``: rows concatenated, the summary recomputed over all of them, each
part's environment and ceilings kept; parts of different commits or GPUs, or a shape in two parts, are refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparse_llm import benchmark
from sparse_llm.models import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", type=Path, nargs="+", help="layers_part.json files")
    parser.add_argument("--out", type=Path, required=True, help="the merged grid's JSON file")
    args = parser.parse_args()
    for path in args.parts:
        if not path.is_file():
            raise SystemExit(f"no such part: {path}")
    result = benchmark.merge_parts([json.loads(p.read_text()) for p in args.parts], [str(p) for p in args.parts])
    write_json(args.out, result)  # atomic: a cut-short write never replaces an earlier merge
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out} ({len(result['shapes'])} shapes, {len(result['rows'])} rows)")


if __name__ == "__main__":
    main()
