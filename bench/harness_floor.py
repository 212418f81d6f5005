"""What the timing harness allows at decode: the graph-replay times in bench/results are the median of ``do_bench``
on a CUDA-graph replay with the L2 cache cleared (a 256 MB memset) before each run. This script times, the same way,
in one run:

- a one-element kernel: the fixed cost of a timed call;
- per Llama shape, one pass over the dense weight's bytes and one over the 2:4 layer's bytes (values + metadata),
  each the same reduction (``torch.sum`` in fp32 over a flat bf16 buffer of that size), and dense ``F.linear`` at
  M = 1. The ratio of the two passes is what a kernel that only streams its weight, as well as torch's reduction
  does, would show against one that streams the dense weight: the decode ceiling of this harness.

    python bench/harness_floor.py --out DIR

The same calls are also timed with the L2 cleared by *reading* 256 MB before each replay (the ``*_clean_us``
fields): the memset leaves up to an L2 of dirty lines that the next kernel's reads must write back first, a read
leaves clean ones. SparseLinear (auto) at M = 1 is timed both ways beside dense ``F.linear``.

Writes ``harness_floor.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import llama_shapes, write_result  # noqa: E402

from sparse_llm import Sparse24Weight, SparseLinear  # noqa: E402
from sparse_llm.benchmark import _random_24, capture_graph, events_us, time_graph_us  # noqa: E402

_SCRATCH: list[torch.Tensor] = []


def clean_graph_us(fn, reps: int = 20) -> float:
    """Median microseconds of a CUDA-graph replay of ``fn`` after a 256 MB read (L2 full of clean lines)."""
    if not _SCRATCH:
        _SCRATCH.append(torch.ones(1 << 27, device="cuda", dtype=torch.bfloat16))  # 256 MB
        _SCRATCH.append(torch.zeros((), device="cuda", dtype=torch.float32))
    scratch, acc = _SCRATCH
    graph, _ = capture_graph(fn)
    return events_us(graph.replay, reps, before=lambda: torch.sum(scratch, dim=0, dtype=torch.float32, out=acc))


def stream_us(nbytes: int, clean: bool = False) -> float:
    buf = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    return (clean_graph_us if clean else time_graph_us)(lambda: torch.sum(buf, dtype=torch.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    one = torch.zeros(1, device="cuda")
    empty_us = time_graph_us(lambda: one.add_(1))
    empty_clean_us = clean_graph_us(lambda: one.add_(1))
    print(f"one-element kernel: {empty_us:.1f} us (after a read instead of the memset: {empty_clean_us:.1f} us)")
    rows = []
    for n, k in llama_shapes():
        dense_bytes = 2 * n * k
        sparse_bytes = n * k + n * k // 8  # values (N, K/2) bf16 + metadata (N, K/16) int16
        w = _random_24(n, k, torch.bfloat16)
        layer = SparseLinear.from_weight(Sparse24Weight.from_dense(w))
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        row = {"n": n, "k": k, "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes}
        for clean, tail in ((False, "us"), (True, "clean_us")):
            timer = clean_graph_us if clean else time_graph_us
            row[f"stream_dense_{tail}"] = stream_us(dense_bytes, clean)
            row[f"stream_sparse_{tail}"] = stream_us(sparse_bytes, clean)
            row[f"dense_linear_m1_{tail}"] = timer(lambda w=w, x=x: F.linear(x, w))
            row[f"ours_m1_{tail}"] = timer(lambda layer=layer, x=x: layer(x))
        row["stream_ratio"] = row["stream_dense_us"] / row["stream_sparse_us"]
        row["stream_ratio_clean"] = row["stream_dense_clean_us"] / row["stream_sparse_clean_us"]
        row["ours_m1_ratio"] = row["dense_linear_m1_us"] / row["ours_m1_us"]
        row["ours_m1_ratio_clean"] = row["dense_linear_m1_clean_us"] / row["ours_m1_clean_us"]
        row["stream_sparse_tb_s"] = sparse_bytes / row["stream_sparse_us"] / 1e6
        rows.append(row)
        del w, layer
        print(
            f"{n}x{k}: stream dense {row['stream_dense_us']:.1f} us, stream 2:4 {row['stream_sparse_us']:.1f} us "
            f"(ratio {row['stream_ratio']:.2f}; after a read {row['stream_ratio_clean']:.2f}), M=1 dense "
            f"{row['dense_linear_m1_us']:.1f} us, ours {row['ours_m1_us']:.1f} us (after a read: "
            f"{row['dense_linear_m1_clean_us']:.1f} / {row['ours_m1_clean_us']:.1f} us)",
            flush=True,
        )
    summary = {key: statistics.median(r[key] for r in rows)
               for key in ("stream_ratio", "stream_ratio_clean", "ours_m1_ratio", "ours_m1_ratio_clean")}  # fmt: skip
    print(f"medians over the shapes: {summary}")
    payload = {"empty_us": empty_us, "empty_clean_us": empty_clean_us, "rows": rows,
               "median_stream_ratio": summary["stream_ratio"], "medians": summary}  # fmt: skip
    write_result(args.out, "harness_floor", payload)


if __name__ == "__main__":
    main()
