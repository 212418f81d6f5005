"""Kernel-level sweep of the small-M 2:4 kernels against cuBLAS and our cuSPARSELt on the Llama linear shapes.

    python bench/small_m.py --out DIR [--ms 1 2 4 ...] [--kernels fma select]

For every distinct (N, K) and M it times, as CUDA-graph replays (median of do_bench, L2 cleared before each
replay), dense ``F.linear`` and every candidate launch configuration of the small-M kernels, plus the cuSPARSELt
extension; it writes ``small_m.json`` (every time, the best configuration per kernel, ratios to dense measured
in the same run) and prints the per-M median over shapes. ``sparse_llm.tune`` does the same per shape for the
dispatcher; this script is the wider search that chooses the candidate lists.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_shapes, write_result  # noqa: E402

from sparse_llm import Sparse24Weight  # noqa: E402
from sparse_llm.backends import cusparselt  # noqa: E402
from sparse_llm.backends.triton_small import SmallConfig, _split_k_for, spmm24_small  # noqa: E402
from sparse_llm.benchmark import time_graph_us  # noqa: E402

MS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def candidates(kernel: str, m: int, n: int, k: int, sms: int) -> list[SmallConfig]:
    out = []

    def add(kern, bm, bn, bq, warps, stages):
        programs = triton.cdiv(n, bn) * triton.cdiv(m, bm)
        for split in sorted({1, _split_k_for(programs, k // 16, bq, sms)}):
            out.append(SmallConfig(kern, bm, bn, bq, split, warps, stages))

    if kernel == "fma" and m <= 4:
        for bn, bq, warps in ((8, 64, 4), (16, 32, 4), (16, 64, 4), (32, 32, 4), (16, 64, 8), (32, 64, 8)):
            add("fma", 1, bn, bq, warps, 1)
    if kernel == "select" and m <= 2:
        add("select", triton.next_power_of_2(m), 16, 64, 4, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ms", type=int, nargs="+", default=list(MS))
    parser.add_argument("--kernels", nargs="+", default=["fma", "select"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = llama_shapes()
    rows, table = [], []
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda", dtype=dtype)
        keep = torch.rand(n, k // 4, 4, device="cuda").argsort(-1) < 2
        dense = w * keep.reshape(n, k)
        packed = Sparse24Weight.from_dense(dense)
        compressed, meta = cusparselt.compress_values(packed.values, packed.meta)
        values = compressed[: packed.values.numel()].view(packed.values.shape)  # one copy, as in SparseLinear
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            ref = F.linear(x.float(), dense.float())
            t_dense = time_graph_us(lambda x=x, dense=dense: F.linear(x, dense))
            t_cslt = time_graph_us(lambda x=x, c=compressed, n=n, k=k: cusparselt.cusparselt_linear(x, c, n, k))
            best = {}
            for kernel in args.kernels:
                for cfg in candidates(kernel, m, n, k, sms):
                    row = {"n": n, "k": k, "m": m, "config": cfg.as_dict()}
                    try:
                        out = spmm24_small(x, values, meta, None, cfg)
                        err = ((out.float() - ref).norm() / ref.norm()).item()
                        row["rel_err"] = err
                        if not err < 1e-2:
                            raise AssertionError(f"relative error {err}")
                        row["us"] = time_graph_us(
                            lambda cfg=cfg, x=x, v=values, mt=meta: spmm24_small(x, v, mt, None, cfg)
                        )
                        row["speedup"] = t_dense / row["us"]
                    except Exception as e:  # a config that does not compile or is wrong: recorded, skipped
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                    rows.append(row)
                    if "us" in row and row["us"] < best.get(kernel, {}).get("us", float("inf")):
                        best[kernel] = row
            entry = {"n": n, "k": k, "m": m, "dense_us": t_dense, "cusparselt_us": t_cslt,
                     "cusparselt_speedup": t_dense / t_cslt}  # fmt: skip
            for kernel, row in best.items():
                entry[f"{kernel}_us"] = row["us"]
                entry[f"{kernel}_speedup"] = row["speedup"]
                entry[f"{kernel}_config"] = row["config"]
            table.append(entry)
            print(
                f"{n}x{k} M={m}: dense {t_dense:.1f} cslt {t_cslt:.1f} "
                + " ".join(f"{kk} {r['us']:.1f} ({r['speedup']:.2f}x {r['config']['block_n']}/"
                           f"{r['config']['block_q']}/{r['config']['split_k']}/{r['config']['num_warps']})"
                           for kk, r in best.items()),
                flush=True,
            )  # fmt: skip
        write_result(args.out, "small_m", {"shapes": shapes, "table": table, "rows": rows})
    print("median over shapes of dense/ours (graph replay):")
    for m in args.ms:
        line = [f"M={m}:"]
        for key in ["cusparselt"] + args.kernels:
            vals = [e[f"{key}_speedup"] for e in table if e["m"] == m and f"{key}_speedup" in e]
            if vals:
                line.append(f"{key} {statistics.median(vals):.2f} (min {min(vals):.2f})")
        print(" ".join(line))


if __name__ == "__main__":
    main()
