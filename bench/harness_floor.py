"""What the timing harness allows at decode: every time in bench/results is the median of ``do_bench`` on a CUDA-graph
replay with the L2 cache cleared (a 256 MB memset) before each run. This script times, the same way, in one run:

- a one-element kernel: the fixed cost of a timed call;
- per Llama shape, one pass over the dense weight's bytes and one over the 2:4 layer's bytes (values + metadata),
  each the same reduction (``torch.sum`` in fp32 over a flat bf16 buffer of that size), and dense ``F.linear`` at
  M = 1. The ratio of the two passes is what a kernel that only streams its weight, as well as torch's reduction
  does, would show against one that streams the dense weight: the decode ceiling of this harness.

    python bench/harness_floor.py --out DIR

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

from sparse_llm.benchmark import time_graph_us  # noqa: E402


def stream_us(nbytes: int) -> float:
    buf = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    return time_graph_us(lambda: torch.sum(buf, dtype=torch.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    one = torch.zeros(1, device="cuda")
    empty_us = time_graph_us(lambda: one.add_(1))
    print(f"one-element kernel: {empty_us:.1f} us", flush=True)
    rows = []
    for n, k in llama_shapes():
        dense_bytes = 2 * n * k
        sparse_bytes = n * k + n * k // 8  # values (N, K/2) bf16 + metadata (N, K/16) int16
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        row = {"n": n, "k": k, "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes,
               "stream_dense_us": stream_us(dense_bytes), "stream_sparse_us": stream_us(sparse_bytes),
               "dense_linear_m1_us": time_graph_us(lambda w=w, x=x: F.linear(x, w))}  # fmt: skip
        row["stream_ratio"] = row["stream_dense_us"] / row["stream_sparse_us"]
        row["stream_sparse_tb_s"] = sparse_bytes / row["stream_sparse_us"] / 1e6
        rows.append(row)
        del w
        print(
            f"{n}x{k}: stream dense {row['stream_dense_us']:.1f} us, stream 2:4 {row['stream_sparse_us']:.1f} us "
            f"(ratio {row['stream_ratio']:.2f}), dense F.linear M=1 {row['dense_linear_m1_us']:.1f} us",
            flush=True,
        )
    median_ratio = statistics.median(r["stream_ratio"] for r in rows)
    print(f"median stream ratio over the shapes: {median_ratio:.3f}")
    write_result(args.out, "harness_floor", {"empty_us": empty_us, "rows": rows, "median_stream_ratio": median_ratio})


if __name__ == "__main__":
    main()
