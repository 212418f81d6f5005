"""A/B of a compile-time variant of the sparse tensor-core kernels, side by side in one run.

    python bench/mma_variant.py --out DIR --define SPARSE_LLM_CLUSTER_SPLIT_MAX=1 [--ms 1 8 ...] [--quick]

Builds ``csrc/spmm24_mma.cu`` a second time with ``-D<define>`` (its own module name and build directory), checks
both builds against F.linear on the dense masked weight (and records whether their outputs are bit-identical),
then times, per Llama shape and M, the tuned configuration of the committed table
(``bench/results/crossover_h100.json``) and the untuned default (``default_config``) with both builds, interleaved
(A, B, A, B; the median of each), next to dense F.linear, as CUDA-graph replays. Writes ``mma_variant.json``:
every time, and per M the median over shapes of (variant time / package time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_shapes, random_packed, rel_err, write_result  # noqa: E402

from sparse_llm.backends._build import MMA_SOURCE, _jit, load_mma_extension, mma_headers_flag  # noqa: E402
from sparse_llm.backends.sparse_mma import MmaConfig  # noqa: E402
from sparse_llm.backends.sparse_mma import mma_sp_default_config as default_config  # noqa: E402
from sparse_llm.benchmark import time_graph_us  # noqa: E402
from sparse_llm.tune import m_bucket  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MS = (1, 8, 16, 32, 64, 128, 256)
TABLE = ROOT / "bench" / "results" / "crossover_h100.json"


def build_variant(define: str):
    tag = "".join(ch if ch.isalnum() else "_" for ch in define).lower()
    t0 = time.time()
    mod = _jit(f"_sparse_llm_mma_{tag}", MMA_SOURCE, f"mma-variant-{tag}-",
               extra_cuda_cflags=["-O3", mma_headers_flag(), f"-D{define}"])  # fmt: skip
    print(f"variant -D{define} built in {time.time() - t0:.0f} s", flush=True)
    return mod


def tuned_configs() -> dict:
    out = {}
    if TABLE.is_file():
        for e in json.loads(TABLE.read_text()):
            for m, c in e.get("mma_configs", {}).items():
                out[(e["n"], e["k"], int(m))] = MmaConfig(**c)
    return out


def run(mod, x, values, meta, c: MmaConfig, bias=None):
    return mod.spmm24_mma(x, values, meta, bias, c.rows, c.tokens, c.split, c.stages, c.warps, c.cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--define", required=True, help="NAME=VALUE compiled into the variant (B)")
    parser.add_argument("--ms", type=int, nargs="+", default=list(MS))
    parser.add_argument("--quick", action="store_true", help="three shapes instead of ten")
    args = parser.parse_args()
    mods = {"package": load_mma_extension(), "variant": build_variant(args.define)}
    device = torch.device("cuda", 0)
    tuned = tuned_configs()

    # correctness of both builds: odd shapes, both dtypes, bias, every tile kind used below
    checks = []
    for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float16, 5e-3)):
        for n, k, m in ((80, 512, 7), (1000, 1024, 33), (256, 4096, 100)):
            dense, values, meta = random_packed(n, k, dtype)
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            bias = torch.randn(n, device="cuda", dtype=dtype)
            ref = F.linear(x.float(), dense.float(), bias.float())
            configs = {default_config(m, n, k, device), MmaConfig(16, 8, 4, 2, 4), MmaConfig(32, 8, 1, 2, 4),
                       MmaConfig(32, 64, 3, 2, 8), MmaConfig(16, 8, 1, 1, 4)}  # fmt: skip
            configs |= {MmaConfig(16, 8, 4, s, 4) for s in (3, 4, 8, 16) if s <= k // 128}
            for c in sorted(configs, key=str):
                outs = {name: run(mod, x, values, meta, c, bias) for name, mod in mods.items()}
                for name, out in outs.items():
                    e = rel_err(out, ref)
                    checks.append({"build": name, "dtype": str(dtype), "n": n, "k": k, "m": m, **c.as_dict(),
                                   "rel_err": e, "ok": e < tol,
                                   "same_bits": torch.equal(out, outs["package"])})  # fmt: skip
    bad = [c for c in checks if not c["ok"]]
    same = sum(c["same_bits"] for c in checks if c["build"] == "variant")
    print(f"correctness: {len(checks) - len(bad)}/{len(checks)} ok; variant bit-identical to the package in "
          f"{same}/{len(checks) // 2}", flush=True)  # fmt: skip
    if bad:
        write_result(args.out, "mma_variant", {"define": args.define, "checks": checks})
        raise SystemExit(f"wrong products: {bad[:3]}")

    shapes = llama_shapes()
    if args.quick:
        shapes = [(4096, 4096), (28672, 8192), (1024, 8192)]
    rows = []
    for n, k in shapes:
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_dense = time_graph_us(lambda x=x, dense=dense: F.linear(x, dense))
            configs = {"default": default_config(m, n, k, device)}
            if (n, k, m_bucket(m)) in tuned:
                configs["tuned"] = tuned[(n, k, m_bucket(m))]
            for kind, c in configs.items():
                times = {"package": [], "variant": []}
                for _ in range(2):
                    for name, mod in mods.items():
                        times[name].append(
                            time_graph_us(lambda mod=mod, x=x, c=c, v=values, mt=meta: run(mod, x, v, mt, c))
                        )
                a, b = statistics.median(times["package"]), statistics.median(times["variant"])
                rows.append({"n": n, "k": k, "m": m, "config": kind, **c.as_dict(), "dense_us": t_dense,
                             "package_us": a, "variant_us": b, "variant_over_package": b / a})  # fmt: skip
                print(f"{n}x{k} M={m} {kind} {c}: dense {t_dense:.1f}  package {a:.1f} ({t_dense / a:.2f}x)  "
                      f"variant {b:.1f} ({t_dense / b:.2f}x)", flush=True)  # fmt: skip
        write_result(args.out, "mma_variant", {"define": args.define, "checks": checks, "rows": rows})
    summary = {}
    for kind in ("default", "tuned"):
        for m in args.ms:
            r = [x["variant_over_package"] for x in rows if x["m"] == m and x["config"] == kind]
            if r:
                summary[f"{kind} M={m}"] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    for key, v in summary.items():
        print(f"{key}: variant/package time median {v['median']:.3f} (min {v['min']:.3f}, max {v['max']:.3f})")
    write_result(args.out, "mma_variant", {"define": args.define, "checks": checks, "rows": rows,
                                           "summary": summary})  # fmt: skip


if __name__ == "__main__":
    main()
