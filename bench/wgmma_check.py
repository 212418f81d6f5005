"""The warpgroup sparse MMA kernel (csrc/spmm24_wgmma.cu, H100): correctness of every tile, then its time against
dense F.linear, side by side in one run.

    python bench/wgmma_check.py --out DIR [--quick] [--ms 16 64 ...] [--shapes 4096x4096 ...]

1. Builds the extension (JIT, sm_90a) and checks every (tokens, warpgroups, cluster) tile against F.linear on the
   dense masked weight (bf16 relative error < 1e-2, fp16 < 5e-3) at odd M, with and without bias, split 1 and 3. A
   failure records where the error sits (rows mod 64, tokens mod the tile), which is what a layout mistake shows.
2. Times, per Llama shape and M, the tiles near M's size with a few splits of K, dense F.linear and (with
   --cusparselt) the cuSPARSELt extension, as CUDA-graph replays (median of do_bench); keeps every time and the best
   tile per (shape, M).
Writes ``wgmma_check.json``.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import llama_shapes, random_packed, rel_err, write_result  # noqa: E402

from sparse_llm.backends import cusparselt  # noqa: E402
from sparse_llm.backends.sparse_mma import WGMMA_TILES  # noqa: E402
from sparse_llm.benchmark import parse_shape, time_graph_us  # noqa: E402

TILES = tuple(sorted(WGMMA_TILES))
MS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3}


def where_wrong(y: torch.Tensor, ref: torch.Tensor, tokens: int) -> dict:
    err = (y.float() - ref.float()).abs() > 0.05 * ref.float().abs().max()
    rows = sorted({int(r) % 64 for r in err.any(0).nonzero().flatten().tolist()})
    toks = sorted({int(t) % tokens for t in err.any(1).nonzero().flatten().tolist()})
    return {"bad_fraction": err.float().mean().item(), "rows_mod_64": rows[:64], "tokens_mod_tile": toks[:64]}


def check(ext, quick: bool, tiles=TILES) -> list[dict]:
    """Every tile of ``tiles`` (the shipped ones unless told) against F.linear."""
    out = []
    cases = [(192, 384), (1024, 4096)] if quick else [(192, 384), (1024, 4096), (1536, 11008)]
    for dtype in (torch.bfloat16, torch.float16):
        for n, k in cases:
            dense, values, meta = random_packed(n, k, dtype)
            for tokens, wgs, ct, cr in tiles:
                if n % (64 * wgs * cr):
                    continue
                for m in (1, 7, 33, 100, 300):
                    for split in (1, 3):
                        for with_bias in (False, True):
                            if dtype == torch.float16 and (split, with_bias) != (3, True):
                                continue  # fp16: one combination per tile and M
                            x = torch.randn(m, k, device="cuda", dtype=dtype)
                            bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
                            ref = F.linear(x, dense, bias)
                            try:
                                y = ext.spmm24_wgmma(x, values, meta, bias, tokens, wgs, ct, cr, split)
                                torch.cuda.synchronize()
                                err = rel_err(y, ref)
                                row = {"error": err, "ok": err < TOL[dtype]}
                                if not row["ok"]:
                                    row.update(where_wrong(y, ref, tokens))
                            except RuntimeError as e:
                                row = {"ok": False, "exception": str(e)[:300]}
                            row.update(dtype=str(dtype), n=n, k=k, m=m, tokens=tokens, warpgroups=wgs,
                                       cluster=[ct, cr], split=split, bias=with_bias)
                            out.append(row)
                            if not row["ok"]:
                                print("FAIL", row, flush=True)
    return out


def splits_for(m: int, n: int, k: int, tokens: int, wgs: int, sms: int) -> list[int]:
    blocks = -(-m // tokens) * (n // (64 * wgs))
    chunks = k // 128
    out = [1]
    for s in (2, 3, 4, 6, 8, 12, 16):
        if blocks * s <= 3 * sms and chunks // s >= 4:
            out.append(s)
    return out


def sweep(ext, shapes, ms, with_cusparselt: bool, save) -> list[dict]:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for n, k in shapes:
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        compressed = cusparselt.compress_values(values, meta)[0] if with_cusparselt else None
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            dense_us = time_graph_us(lambda x=x, d=dense: F.linear(x, d))
            times = []
            for tokens, wgs, ct, cr in TILES:
                if tokens > 2 * max(8, m) or (tokens < m // 4 and tokens < 128) or n % (64 * wgs * cr):
                    continue
                if ct > 1 and m <= tokens:
                    continue
                for split in splits_for(m, n, k, tokens, wgs, sms):
                    args = (x, values, meta, None, tokens, wgs, ct, cr, split)
                    us = time_graph_us(lambda args=args: ext.spmm24_wgmma(*args))
                    times.append({"tokens": tokens, "warpgroups": wgs, "cluster": [ct, cr], "split": split, "us": us})
            best = min(times, key=lambda r: r["us"])
            y = ext.spmm24_wgmma(x, values, meta, None, best["tokens"], best["warpgroups"], *best["cluster"],
                                 best["split"])  # fmt: skip
            row = {"n": n, "k": k, "m": m, "dense_us": dense_us, "best": best, "speedup": dense_us / best["us"],
                   "error": rel_err(y, F.linear(x, dense)), "times": times}  # fmt: skip
            line = (f"{n}x{k} M={m}: dense {dense_us:.1f} us, wgmma {best['us']:.1f} us ({row['speedup']:.2f}x) "
                    f"tile {best['tokens']}x{64 * best['warpgroups']} cluster {best['cluster']} split {best['split']}")
            if compressed is not None:
                run = lambda x=x, c=compressed, n=n, k=k: cusparselt.cusparselt_linear(x, c, n, k)  # noqa: E731
                row["cusparselt_us"] = time_graph_us(run)
                row["cusparselt_speedup"] = dense_us / row["cusparselt_us"]
                line += f"; cuSPARSELt {row['cusparselt_us']:.1f} us ({row['cusparselt_speedup']:.2f}x)"
            rows.append(row)
            print(line, flush=True)
        save(rows)  # what is measured so far survives a run cut short
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer correctness cases and three shapes")
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS))
    ap.add_argument("--shapes", nargs="*", default=None, help="NxK, default: the Llama shapes")
    ap.add_argument("--cusparselt", action="store_true", help="time the cuSPARSELt extension beside each case")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness cases (a rerun of timings only)")
    args = ap.parse_args()
    from sparse_llm.backends._build import load_wgmma_extension

    t0 = time.time()
    ext = load_wgmma_extension()
    build_s = time.time() - t0
    print(f"built in {build_s:.0f} s; stages per tile:",
          {f"{t}x{64 * w}": ext.stages(t, w) for t, w, _, _ in TILES}, flush=True)  # fmt: skip
    checks = [] if args.no_check else check(ext, args.quick)
    ok = sum(r["ok"] for r in checks)
    print(f"correctness: {ok}/{len(checks)} ok", flush=True)
    if args.shapes:
        shapes = [parse_shape(s) for s in args.shapes]
    else:
        shapes = [(28672, 8192), (4096, 4096), (1024, 4096)] if args.quick else llama_shapes()

    def save(rows: list[dict]) -> dict:
        summary = {}
        for m in args.ms:
            vals = [r["speedup"] for r in rows if r["m"] == m]
            if vals:
                summary[str(m)] = {"median_speedup": statistics.median(vals), "min": min(vals), "max": max(vals)}
                cus = [r["cusparselt_speedup"] for r in rows if r["m"] == m and "cusparselt_speedup" in r]
                if cus:
                    summary[str(m)]["median_cusparselt_speedup"] = statistics.median(cus)
        write_result(args.out, "wgmma_check", {"build_s": build_s, "checks_ok": ok, "checks": checks,
                                               "sweep": rows, "summary": summary})  # fmt: skip
        return summary

    rows = sweep(ext, shapes, args.ms, args.cusparselt, save) if ok == len(checks) else []
    summary = save(rows)
    print("median speedup over dense per M:", {m: round(v["median_speedup"], 2) for m, v in summary.items()})


if __name__ == "__main__":
    main()
