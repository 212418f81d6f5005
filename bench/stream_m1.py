"""Why M = 1 ran 10-17% slower than M = 2 in the layer grid's stream column on the 70B MLP layers (same kernel and
configuration; equal in graph replay after the memset). Times, in one process, the stream of ``bench/layers.py``
(``benchmark.time_stream_us``) for SparseLinear (auto) and dense at M = 1, 2, 1, 2 (is it the first M measured?),
with 2 and 4 copies, and the graph-replay time of one call, on two shapes.

    python bench/stream_m1.py --out DIR

Writes ``stream_m1.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_result  # noqa: E402

from sparse_llm import Sparse24Weight, SparseLinear  # noqa: E402
from sparse_llm.benchmark import _random_24, time_graph_us, time_stream_us  # noqa: E402

SHAPES = ((28672, 8192), (8192, 8192))


def measure(layers: list[SparseLinear], denses: list[torch.Tensor], m: int, copies: int) -> dict:
    n, k = denses[0].shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    return {"n": n, "k": k, "m": m, "copies": copies,
            "ours_stream_us": time_stream_us([lambda s=s: s(x) for s in layers[:copies]]),
            "dense_stream_us": time_stream_us([lambda w=w: F.linear(x, w) for w in denses[:copies]]),
            "ours_graph_us": time_graph_us(lambda: layers[0](x))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    for n, k in SHAPES:
        denses = [_random_24(n, k, torch.bfloat16) for _ in range(4)]
        layers = [SparseLinear.from_weight(Sparse24Weight.from_dense(d)) for d in denses]
        for copies in (2, 4):
            for m in (1, 2, 1, 2):
                rows.append(measure(layers, denses, m, copies))
                print({key: round(v, 1) if isinstance(v, float) else v for key, v in rows[-1].items()}, flush=True)
        denses.clear()
        layers.clear()
        torch.cuda.empty_cache()
    write_result(args.out, "stream_m1", {"rows": rows})


if __name__ == "__main__":
    main()
