"""Build, check and time the sparse-tensor-core small-M kernel (csrc/spmm24_mma.cu) against cuBLAS.

    python bench/mma_sweep.py --out DIR [--ms 1 2 4 ...] [--quick]

Loads the package's kernel (built by setup.py, or JIT-built on first use), checks every instantiated tile
against F.linear on the dense masked weight (odd shapes, both dtypes, bias, split-K), then times the candidate
configurations of ``sparse-llm tune`` (``tune.mma_candidates``) per Llama shape and M as CUDA-graph replays
(median of do_bench, L2 cleared before each replay) next to dense F.linear in the same run. Writes
``mma_sweep.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_shapes, random_packed, rel_err, write_result  # noqa: E402

from sparse_llm.backends.sparse_mma import TILES  # noqa: E402
from sparse_llm.benchmark import time_graph_us  # noqa: E402
from sparse_llm.tune import mma_candidates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def build():
    from sparse_llm.backends._build import load_mma_extension

    t0 = time.time()
    mod = load_mma_extension()
    print(f"extension ready in {time.time() - t0:.1f} s ({mod.__name__})", flush=True)
    return mod


def run(mod, x, values, meta, bias, rows, tokens, split, stages, warps=4, cluster=False):
    return mod.spmm24_mma(x, values, meta, bias, rows, tokens, split, stages, warps, cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ms", type=int, nargs="+", default=list(MS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    mod = build()
    # 1. the metadata register layout (found on the H100: thread 0 of a quad holds groups 0-3 of rows g, g+8)
    dense, values, meta = random_packed(128, 256, torch.bfloat16)
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    checks = {"first": rel_err(run(mod, x, values, meta, None, 16, 8, 1, 1), F.linear(x.float(), dense.float()))}
    print("first check:", checks, flush=True)
    if not checks["first"] < 1e-2:
        write_result(args.out, "mma_sweep", {"checks": checks, "error": "wrong product"})
        raise SystemExit("the kernel gives a wrong product")
    # 2. correctness over odd shapes, dtypes, bias, split, tiles
    errors = []
    for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float16, 5e-3)):
        for n, k, m in ((48, 256, 1), (80, 512, 7), (1000, 1024, 33), (256, 4096, 100), (64, 768, 257)):
            dense, values, meta = random_packed(n, k, dtype)
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            bias = torch.randn(n, device="cuda", dtype=dtype)
            ref = F.linear(x.float(), dense.float(), bias.float())
            for rows, tokens, stages, warps in sorted(TILES):
                # split 3 of 4 chunks (k = 1024) leaves the last piece empty: it must still count in
                for split in sorted({1, min(3, k // 256), k // 256}):
                    out = run(mod, x, values, meta, bias, rows, tokens, split, stages, warps)
                    e = rel_err(out, ref)
                    same = torch.equal(out, run(mod, x, values, meta, bias, rows, tokens, split, stages, warps))
                    errors.append({"dtype": str(dtype), "n": n, "k": k, "m": m, "rows": rows, "tokens": tokens,
                                   "stages": stages, "warps": warps, "split": split, "rel_err": e,
                                   "deterministic": same})  # fmt: skip
                    if not (e < tol and same):
                        print("WRONG", errors[-1], flush=True)
    bad = [e for e in errors if not (e["rel_err"] < (1e-2 if "bfloat" in e["dtype"] else 5e-3) and e["deterministic"])]
    print(f"correctness: {len(errors) - len(bad)}/{len(errors)} ok, max err "
          f"{max(e['rel_err'] for e in errors):.2e}", flush=True)  # fmt: skip
    # 3. timing
    shapes = llama_shapes()
    if args.quick:
        shapes = [(4096, 4096), (28672, 8192), (1024, 8192)]
    table, rows_out = [], []
    dtype = torch.bfloat16
    for n, k in shapes:
        dense, values, meta = random_packed(n, k, dtype)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            t_dense = time_graph_us(lambda x=x, dense=dense: F.linear(x, dense))
            ref = F.linear(x.float(), dense.float())
            best = None
            for c in mma_candidates(m, n, k, torch.device("cuda", 0)):
                cfg = c.as_dict()
                try:
                    out = run(mod, x, values, meta, None, c.rows, c.tokens, c.split, c.stages, c.warps, c.cluster)
                    err = rel_err(out, ref)
                    if not err < 1e-2:
                        raise AssertionError(f"rel err {err}")
                    us = time_graph_us(
                        lambda x=x, v=values, mt=meta, c=c: run(
                            mod, x, v, mt, None, c.rows, c.tokens, c.split, c.stages, c.warps, c.cluster
                        )
                    )
                except Exception as e:
                    rows_out.append({"n": n, "k": k, "m": m, **cfg, "error": str(e)[:200]})
                    continue
                rows_out.append({"n": n, "k": k, "m": m, **cfg, "us": us, "speedup": t_dense / us})
                if best is None or us < best["us"]:
                    best = {**cfg, "us": us}
            entry = {"n": n, "k": k, "m": m, "dense_us": t_dense, "best": best,
                     "speedup": t_dense / best["us"] if best else None}  # fmt: skip
            table.append(entry)
            tile = f"{best['rows']}/{best['tokens']}/{best['stages']}/{best['split']}/{best['warps']}w" if best else "-"
            speed = f"{best['us']:.1f} ({entry['speedup']:.2f}x {tile})" if best else "no config"
            print(f"{n}x{k} M={m}: dense {t_dense:.1f} mma {speed}", flush=True)
        write_result(args.out, "mma_sweep", {"checks": checks, "correctness": errors,
                                             "table": table, "rows": rows_out})  # fmt: skip
    print("median over shapes of dense/mma (graph replay):")
    for m in args.ms:
        vals = [e["speedup"] for e in table if e["m"] == m and e["speedup"]]
        if vals:
            print(f"M={m}: {statistics.median(vals):.2f} (min {min(vals):.2f})")


if __name__ == "__main__":
    main()
