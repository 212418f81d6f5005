"""Fixed cost against cost per chunk of the warpgroup kernel: one tile timed over a range of K, dense beside it.

    python bench/wgmma_kscan.py --out DIR [--cases 11008:256:128:4 ...] [--ks 128 256 ... 32768]

A case is N:M:tokens:warpgroups (split 1, no cluster). For each K, the CUDA-graph replay after the L2 clear (the
grid's graph column) of the tile and of dense ``F.linear`` with the same N, M, K; then a least-squares line
time = fixed + per_chunk x K / 128 per case (chunks of 128 columns of K), for both. The line's intercept is what a
call costs besides its chunks (launch, the ring's first fill, the epilogue, the harness's own floor), the slope what
each chunk costs in steady state. Writes ``wgmma_kscan.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_packed, rel_err, write_result  # noqa: E402

from sparse_llm.backends import cusparselt  # noqa: E402
from sparse_llm.backends.sparse_mma import WGMMA_CHUNK, spmm24_mma, wgmma_config  # noqa: E402
from sparse_llm.benchmark import time_graph_us  # noqa: E402

CASES = ("11008:256:128:4", "11008:1024:128:4", "4096:128:64:1", "1024:1024:64:2")
KS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)  # the package takes K in multiples of 256


def line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    fit = statistics.linear_regression(xs, ys)
    return fit.intercept, fit.slope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--ks", type=int, nargs="*", default=list(KS))
    ap.add_argument("--cusparselt", action="store_true", help="time the cuSPARSELt extension beside each case")
    args = ap.parse_args()
    results = []
    for case in args.cases:
        n, m, tokens, wgs = (int(v) for v in case.split(":"))
        cfg = wgmma_config(tokens, wgs)
        rows = []
        for k in args.ks:
            if k % WGMMA_CHUNK:
                raise SystemExit(f"wgmma_kscan: K = {k} is not a multiple of the kernel's chunk ({WGMMA_CHUNK})")
            dense, values, meta = random_packed(n, k, torch.bfloat16)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            err = rel_err(spmm24_mma(x, values, meta, None, cfg), F.linear(x, dense))
            ours = time_graph_us(lambda x=x, v=values, mt=meta, c=cfg: spmm24_mma(x, v, mt, None, c))
            dense_us = time_graph_us(lambda x=x, d=dense: F.linear(x, d))
            row = {"k": k, "chunks": k // WGMMA_CHUNK, "ours_us": ours, "dense_us": dense_us, "rel_err": err}
            if args.cusparselt:
                c = cusparselt.compress_values(values, meta)[0]
                run = lambda x=x, c=c, n=n, k=k: cusparselt.cusparselt_linear(x, c, n, k)  # noqa: E731
                row["cusparselt_us"] = time_graph_us(run)
            rows.append(row)
            print(f"N={n} M={m} tile {tokens}x{64 * wgs} K={k}: ours {ours:.1f} us, dense {dense_us:.1f} us"
                  + (f", cuSPARSELt {row['cusparselt_us']:.1f} us" if args.cusparselt else "")
                  + f" (rel err {err:.1e})", flush=True)  # fmt: skip
            del dense, values, meta, x
        chunks = [r["chunks"] for r in rows]
        fixed, per_chunk = line(chunks, [r["ours_us"] for r in rows])
        d_fixed, d_per_chunk = line(chunks, [r["dense_us"] for r in rows])
        print(f"  ours: {fixed:.1f} us + {per_chunk:.3f} us per chunk; dense: {d_fixed:.1f} + {d_per_chunk:.3f}")
        result = {"n": n, "m": m, "tokens": tokens, "rows_per_block": 64 * wgs, "rows": rows,
                  "ours_fixed_us": fixed, "ours_per_chunk_us": per_chunk, "dense_fixed_us": d_fixed,
                  "dense_per_chunk_us": d_per_chunk}  # fmt: skip
        if args.cusparselt:
            result["cusparselt_fixed_us"], result["cusparselt_per_chunk_us"] = line(
                chunks, [r["cusparselt_us"] for r in rows]
            )
            print(f"  cuSPARSELt: {result['cusparselt_fixed_us']:.1f} + {result['cusparselt_per_chunk_us']:.3f}")
        results.append(result)
        write_result(args.out, "wgmma_kscan", {"cases": results})


if __name__ == "__main__":
    main()
