"""The warpgroup kernel's split-K reduced in a thread-block cluster (``cluster_split``): correctness, then its time
against what SparseLinear runs today and dense F.linear, side by side in one run (H100).

    python bench/wgmma_cluster_split.py --out DIR [--quick]

1. Every tile of ``WGMMA_CLUSTER_SPLIT_TILES`` with 2, 3, 4 and 8 pieces (where K has that many chunks) against
   F.linear on the dense masked weight (bf16 relative error < 1e-2, fp16 < 5e-3) at odd M, with and without bias,
   and against the same tile and split reduced through the global workspace: the same additions in the same order,
   so the same bits.
2. Per Llama shape and M, CUDA-graph replays (median of do_bench, after its L2 clear, as the grid's graph column):
   dense F.linear, SparseLinear with its tuned choice (``auto``), and every cluster-split candidate of the tuner
   (``tune.wgmma_candidates``) beside the same tile and split reduced through the global workspace; the best
   candidate and its ratio to both.
Writes ``wgmma_cluster_split.json``.
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
from common import random_packed, rel_err, write_result  # noqa: E402

from sparse_llm import SparseLinear, tune  # noqa: E402
from sparse_llm.backends import select  # noqa: E402
from sparse_llm.backends._build import load_wgmma_extension  # noqa: E402
from sparse_llm.backends.sparse_mma import WGMMA_CHUNK, WGMMA_CLUSTER_SPLIT_TILES  # noqa: E402
from sparse_llm.benchmark import time_graph_us  # noqa: E402
from sparse_llm.format import Sparse24Weight  # noqa: E402

TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3}
SHAPES = ((1024, 4096), (1024, 8192), (4096, 4096), (28672, 8192))
MS = (1, 16, 256, 512, 1024, 2048)


def check(ext, quick: bool) -> list[dict]:
    out = []
    cases = [(256, 1024), (1024, 4096)] if quick else [(256, 1024), (1024, 4096), (1536, 11008)]
    for dtype in (torch.bfloat16, torch.float16):
        for n, k in cases:
            dense, values, meta = random_packed(n, k, dtype)
            for tokens, wgs in sorted(WGMMA_CLUSTER_SPLIT_TILES):
                if n % (64 * wgs):
                    continue
                for split in (2, 3, 4, 8):
                    if split > k // WGMMA_CHUNK:
                        continue
                    for m in (1, 7, 33, 100, 300):
                        for with_bias in (False, True):
                            if dtype == torch.float16 and not with_bias:
                                continue
                            x = torch.randn(m, k, device="cuda", dtype=dtype)
                            bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
                            ref = F.linear(x, dense, bias)
                            row = {"dtype": str(dtype), "n": n, "k": k, "m": m, "tokens": tokens, "warpgroups": wgs,
                                   "split": split, "bias": with_bias}  # fmt: skip
                            try:
                                y = ext.spmm24_wgmma(x, values, meta, bias, tokens, wgs, 1, 1, split, True)
                                y_global = ext.spmm24_wgmma(x, values, meta, bias, tokens, wgs, 1, 1, split, False)
                                torch.cuda.synchronize()
                                err = rel_err(y, ref)
                                same = bool(torch.equal(y, y_global))
                                row.update(error=err, same_bits_as_global=same, ok=err < TOL[dtype] and same)
                            except RuntimeError as e:
                                row.update(ok=False, exception=str(e)[:300])
                            out.append(row)
                            if not row["ok"]:
                                print("FAIL", row, flush=True)
    return out


def layer(n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, SparseLinear]:
    dense, _, _ = random_packed(n, k, dtype)
    return dense, SparseLinear.from_weight(Sparse24Weight.from_dense(dense))


def timings(ext, quick: bool) -> list[dict]:
    rows = []
    dtype = torch.bfloat16
    shapes = SHAPES[:3] if quick else SHAPES
    for n, k in shapes:
        dense, sparse = layer(n, k, dtype)
        for m in MS[:5] if quick else MS:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            row = {"n": n, "k": k, "m": m}
            row["dense_us"] = time_graph_us(lambda: F.linear(x, dense))  # noqa: B023
            with torch.no_grad():
                row["auto_backend"] = select(sparse, x).name
                row["auto_us"] = time_graph_us(lambda: sparse(x))  # noqa: B023
                if row["auto_backend"] == "sparse_mma":
                    row["auto_config"] = tune.mma_config(n, k, m, dtype, x.device).as_dict()
            cands, plain = {}, {}
            for c in tune.wgmma_candidates(m, n, k, x.device):
                if not c.cluster:
                    continue
                name = f"{c.tokens}x{64 * c.warpgroups}/{c.split}"
                for cluster_split, times in ((True, cands), (False, plain)):  # the same tile and split, both ways
                    args = (c.tokens, c.warpgroups, 1, 1, c.split, cluster_split)
                    times[name] = time_graph_us(
                        lambda a=args: ext.spmm24_wgmma(x, sparse.values, sparse.meta, None, *a)  # noqa: B023
                    )
            row["cluster_split_us"], row["global_split_us"] = cands, plain
            ratios = [plain[name] / cands[name] for name in cands]
            row["cluster_vs_global_median"] = statistics.median(ratios) if ratios else None
            if cands:
                best = min(cands, key=cands.get)
                row.update(best=best, best_us=cands[best], best_vs_auto=row["auto_us"] / cands[best],
                           best_vs_dense=row["dense_us"] / cands[best])  # fmt: skip
            row["auto_vs_dense"] = row["dense_us"] / row["auto_us"]
            rows.append(row)
            print({key: (round(v, 2) if isinstance(v, float) else v) for key, v in row.items()
                   if key not in ("cluster_split_us", "global_split_us", "auto_config")}, flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("wgmma_cluster_split.py needs a GPU")
    ext = load_wgmma_extension()
    checks = check(ext, args.quick)
    bad = [c for c in checks if not c["ok"]]
    print(f"checks: {len(checks) - len(bad)}/{len(checks)} right", flush=True)
    rows = timings(ext, args.quick)
    gains = [r["best_vs_auto"] for r in rows if "best_vs_auto" in r]
    summary = {"checks": len(checks), "wrong": len(bad),
               "median_best_vs_auto": statistics.median(gains) if gains else None,
               "faster_than_auto": sum(g > 1.0 for g in gains), "cases": len(gains)}  # fmt: skip
    print(summary, flush=True)
    write_result(args.out, "wgmma_cluster_split", {"summary": summary, "checks": checks, "rows": rows})


if __name__ == "__main__":
    main()
