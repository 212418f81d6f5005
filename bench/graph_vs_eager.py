"""Eager launch against CUDA-graph replay of the same call, in alternating rounds (H100/H200).

    python bench/graph_vs_eager.py --out DIR [--shapes 8192x8192 ...] [--ms 1024 4096 ...] [--rounds 3]

The layer grids at 9c92232 timed each provider eagerly and then replayed from a CUDA graph, one provider after the
other; at M >= 1024 SparseLinear's (cuSPARSELt there) replays came out 4-5% slower than its eager calls and dense
F.linear's did not (h200/layers_9c92232*.json). Here both are timed the grid's way (do_bench's median after the L2
clear) in ``rounds`` alternating rounds, eager first in the first, third, ... round and the replay first in the
others, so that a drift of the clock over a run cannot favour one column. Writes ``graph_vs_eager.json``: every
time, and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COMMITTED_TABLES, use_tables, write_result  # noqa: E402

from sparse_llm import backends, benchmark  # noqa: E402

SHAPES = ("8192x8192", "11008x4096", "4096x4096", "28672x8192")
MS = (1024, 4096)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    use_tables(COMMITTED_TABLES)
    rows = []
    for n, k in (benchmark.parse_shape(s) for s in args.shapes):
        (dense,), (layer,) = benchmark.stream_copies(n, k, torch.bfloat16, count=1)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            calls = {"dense": lambda x=x, w=dense: F.linear(x, w), "ours": lambda x=x, f=layer: f(x)}
            row = {"n": n, "k": k, "m": m, "backend": backends.select(layer, x).name, "eager_us": {}, "graph_us": {}}
            for name, fn in calls.items():
                fn()
                graph, _ = benchmark.capture_graph(fn)
                eager, replayed = [], []
                for r in range(args.rounds):
                    order = [(eager, fn), (replayed, graph.replay)]
                    for times, call in order if r % 2 == 0 else order[::-1]:
                        times.append(benchmark.time_us(call))
                row["eager_us"][name], row["graph_us"][name] = eager, replayed
            med = {c: {p: statistics.median(row[c][p]) for p in calls} for c in ("eager_us", "graph_us")}
            row["median"] = med
            rows.append(row)
            print(f"{n}x{k} M={m} ({row['backend']}): dense eager {med['eager_us']['dense']:.1f} graph "
                  f"{med['graph_us']['dense']:.1f}; ours eager {med['eager_us']['ours']:.1f} graph "
                  f"{med['graph_us']['ours']:.1f} us", flush=True)  # fmt: skip
    summary = {
        f"{p}_graph_over_eager_median": statistics.median(r["median"]["graph_us"][p] / r["median"]["eager_us"][p]
                                                          for r in rows)
        for p in ("dense", "ours")
    }  # fmt: skip
    path = write_result(args.out, "graph_vs_eager", {"rounds": args.rounds, "rows": rows, "summary": summary})
    print(summary, f"wrote {path}")


if __name__ == "__main__":
    main()
