"""Does the tuner's tile hold in a stream of layers? Every sparse tensor-core candidate ``sparse-llm tune`` weighs
for a shape and M, timed as the tuner times it (CUDA-graph replay after the 256 MB memset, ``tune._bench``) and in a
stream (distinct copies back to back in one graph, no memset: ``benchmark.time_stream_us``), dense beside it in both.

    python bench/tile_stream.py --out DIR [--shapes 1024x4096 1024x8192] [--ms 256 512 1024]

Why: in the H100 grid at 43c3190 the retuned 1024x4096 at M = 512 took a 128-token tile split in 2, faster than the
64-token tile of ffe21d6 in graph replay (17.5 -> 16.4 us) and slower in the stream (11.3 -> 13.7 us against dense's
10.0): the tuner sees only the memset-timed columns (bench/NOTES.md, twenty-sixth round). Writes ``tile_stream.json``:
per shape and M every candidate's two times and ratios to dense, the tuner's pick (fastest replay), the stream's pick,
the pick of ``sparse-llm tune --weigh-stream`` (``weighed_pick``), and what each costs in the other column. Every
candidate is checked against F.linear before it is timed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import rel_err, write_result  # noqa: E402
from wgmma_check import TOL  # noqa: E402

from sparse_llm import tune  # noqa: E402
from sparse_llm.backends import sparse_mma  # noqa: E402
from sparse_llm.benchmark import parse_shape, stream_copies, time_stream_us  # noqa: E402

SHAPES = ("1024x4096", "1024x8192")
MS = (256, 512, 1024)


def time_both(x: torch.Tensor, weights: list, run) -> dict:
    """``run(x, weight)`` timed as the tuner times it (replay after the memset, the first weight) and in a stream
    over all ``weights``."""
    return {"graph_us": tune._bench(lambda: run(x, weights[0])),
            "stream_us": time_stream_us([lambda w=w: run(x, w) for w in weights])}  # fmt: skip


def measure_shape(n: int, k: int, ms: list[int], dtype: torch.dtype) -> list[dict]:
    denses, layers = stream_copies(n, k, dtype)  # enough copies that their weights span several L2 caches
    device = denses[0].device
    weights = [(layer.values, layer.meta) for layer in layers]
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=device, dtype=dtype)
        ref = F.linear(x, denses[0])
        dense = time_both(x, denses, F.linear)
        tiles = []
        for cfg in tune.sparse_mma_candidates(m, n, k, device):

            def run(x, weight, cfg=cfg):
                return sparse_mma.spmm24_mma(x, *weight, None, cfg)

            row = {"config": cfg.as_dict(), "error": rel_err(run(x, weights[0]), ref)}
            if row["error"] < TOL[dtype]:
                row |= time_both(x, weights, run)
                row["graph_speedup"] = dense["graph_us"] / row["graph_us"]
                row["stream_speedup"] = dense["stream_us"] / row["stream_us"]
            tiles.append(row)
        timed = [t for t in tiles if "graph_us" in t]
        if not timed:
            raise RuntimeError(f"{n}x{k} M={m}: no candidate matched F.linear: {tiles[:3]}")
        picks = {"tuner_pick": min(timed, key=lambda t: t["graph_us"]),
                 "stream_pick": min(timed, key=lambda t: t["stream_us"]),
                 "weighed_pick": timed[tune.weighed_pick([t["graph_us"] for t in timed],
                                                         lambda i, timed=timed: timed[i]["stream_us"])]}  # fmt: skip
        rows.append({"n": n, "k": k, "m": m, "copies": len(layers), "dense": dense, "tiles": tiles, **picks})
        print(f"{n}x{k} M={m} ({len(timed)}/{len(tiles)} tiles): " + "; ".join(
            f"{name} {t['config']} graph {t['graph_speedup']:.3f}x stream {t['stream_speedup']:.3f}x"
            for name, t in picks.items()), flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), help="NxK")
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS))
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("tile_stream.py times GPU kernels: no CUDA device is visible")
    sparse_mma.load_mma_extension()  # raises with the reason where the kernels cannot run
    rows = []
    for shape in args.shapes:
        n, k = parse_shape(shape)
        rows += measure_shape(n, k, args.ms, getattr(torch, args.dtype))
        write_result(args.out, "tile_stream", {"rows": rows})  # what is measured survives a run cut short
    print(f"wrote {Path(args.out) / 'tile_stream.json'}")


if __name__ == "__main__":
    main()
