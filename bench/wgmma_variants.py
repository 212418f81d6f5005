"""Build-time variants of the warpgroup kernel (csrc/spmm24_wgmma.cu), side by side on the H100/H200: each variant is
the same source compiled with other values of its knobs (SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT, SPARSE_LLM_WGMMA_MAX_STAGES,
SPARSE_LLM_WGMMA_STAGED_STORE, SPARSE_LLM_WGMMA_EXTRA_TILES, SPARSE_LLM_WGMMA_K_ROTATE) into an extension of its own;
`extra` adds tiles the package does not ship (EXTRA_TILES below), which it checks and times beside the shipped ones.
(Variants measured with it and slower, now gone from the source, bench/NOTES.md: the in-block K split, twentieth
round; W and x in rings of their own, W prefetched into L2 ahead of the ring, and blocks launched in pairs for
placement, twenty-fifth round; W's metadata chunk-major, twenty-sixth round: rerun those from the commits their result
files name.)

    python bench/wgmma_variants.py --out DIR [--variants base pipe ...] [--ms 1 64 ...] [--shapes 4096x4096 ...]
                                   [--build-only]

1. Builds the variants in parallel (JIT, sm_90a) and checks every tile of each against F.linear (the quick cases of
   bench/wgmma_check.py: odd M, with and without bias, split 1 and 3, bf16 and fp16).
2. Per Llama shape and M: dense F.linear, then for each variant the best of the same candidate tiles and splits
   (tokens near M, 64 and 128 rows, split 1, 2, 4), all as CUDA-graph replays (median of do_bench), in one run.
Writes ``wgmma_variants.json``: every time, the best per variant and its ratio to dense, medians per M.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import llama_shapes, random_packed, rel_err, write_result  # noqa: E402
from wgmma_check import check  # noqa: E402

from sparse_llm.backends import _build  # noqa: E402
from sparse_llm.backends.sparse_mma import WGMMA_CHUNK, WGMMA_TILES, wgmma_tiles_near  # noqa: E402
from sparse_llm.benchmark import parse_shape, time_graph_us  # noqa: E402

VARIANTS = {  # name: the knobs' values that differ from what ships (csrc/spmm24_wgmma.cu)
    "base": {},
    "deep": {"SPARSE_LLM_WGMMA_MAX_STAGES": 16},
    "pipe": {"SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT": 2},
    "pipe_deep": {"SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT": 2, "SPARSE_LLM_WGMMA_MAX_STAGES": 16},
    # y stored straight from the accumulators, 2 bytes at a time (what shipped until the staged stores measured
    # faster: h200/wgmma_variants_staged_d9b7d94.json, where this build is `base` and the shipped one `staged`)
    "direct": {"SPARSE_LLM_WGMMA_STAGED_STORE": 0},
    "extra": {"SPARSE_LLM_WGMMA_EXTRA_TILES": 1},  # the shipped build with EXTRA_TILES too
    # each block's walk along K starts part of the way in (blocks reading the same x / the same W / any: apart)
    "rot_rows": {"SPARSE_LLM_WGMMA_K_ROTATE": 1},
    "rot_tokens": {"SPARSE_LLM_WGMMA_K_ROTATE": 2},
    "rot_all": {"SPARSE_LLM_WGMMA_K_ROTATE": 3},
}


# The tiles SPARSE_LLM_WGMMA_EXTRA_TILES=1 adds (checked and timed in the `extra` variant only)
EXTRA_TILES = _build.wgmma_source_tiles("SPARSE_LLM_WGMMA_EXTRA_TILES_LIST(X)")
MS = (1, 16, 64, 100, 128, 256, 512, 1024, 4096)


def build_with(tag: str, defines: dict[str, int]):
    """The warpgroup kernel's source built (JIT, sm_90a) as an extension of its own, named by ``tag``, with
    ``defines`` as -D flags (its build-time knobs)."""
    flags = ["-O3", _build.WGMMA_ARCH_FLAG, _build.mma_headers_flag(), *(f"-D{k}={v}" for k, v in defines.items())]
    return _build._jit(f"_wgmma_{tag}", _build.WGMMA_SOURCE, f"wgmma-{tag}-",
                       extra_cuda_cflags=flags)  # fmt: skip


def build(name: str):
    return build_with(f"variant_{name}", VARIANTS[name])


def build_only(name: str) -> None:
    build(name)


def tiles_of(name: str) -> frozenset:
    """The tiles variant ``name`` is built with."""
    return WGMMA_TILES | EXTRA_TILES if VARIANTS[name].get("SPARSE_LLM_WGMMA_EXTRA_TILES") else WGMMA_TILES


def candidates(m: int, n: int, k: int, tiles=WGMMA_TILES) -> list[tuple[int, int, tuple[int, int], int]]:
    splits = [s for s in (1, 2, 4) if s == 1 or k // (WGMMA_CHUNK * s) >= 4]
    return [(tokens, wgs, (ct, cr), s) for tokens, wgs, ct, cr in wgmma_tiles_near(m, n, tiles) for s in splits]


def time_tile(ext, x, values, meta, tokens: int, wgs: int, cluster: tuple[int, int], split: int) -> float:
    return time_graph_us(lambda: ext.spmm24_wgmma(x, values, meta, None, tokens, wgs, *cluster, split))


def sweep(exts: dict, tiles: dict, shapes, ms, save) -> list[dict]:
    """Dense and each variant's best of its candidate ``tiles[name]`` per shape and M, saved after every shape."""
    rows = []
    for n, k in shapes:
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, dense)
            row = {
                "n": n,
                "k": k,
                "m": m,
                "dense_us": time_graph_us(lambda x=x, d=dense: F.linear(x, d)),
                "variants": {},
            }
            for name, ext in exts.items():
                times = [{"tokens": t, "warpgroups": w, "cluster": list(c), "split": s,
                          "us": time_tile(ext, x, values, meta, t, w, c, s)}
                         for t, w, c, s in candidates(m, n, k, tiles[name])]  # fmt: skip
                best = min(times, key=lambda r: r["us"])
                y = ext.spmm24_wgmma(x, values, meta, None, best["tokens"], best["warpgroups"], *best["cluster"],
                                     best["split"])  # fmt: skip
                row["variants"][name] = {"best": best, "speedup": row["dense_us"] / best["us"],
                                         "error": rel_err(y, ref), "times": times}  # fmt: skip
            rows.append(row)
            print(f"{n}x{k} M={m}: dense {row['dense_us']:.1f} us; "
                  + ", ".join(f"{v} {r['best']['us']:.1f} us ({r['speedup']:.2f}x, tokens {r['best']['tokens']}, "
                              f"{r['best']['warpgroups']} wg, cluster {r['best']['cluster']}, "
                              f"split {r['best']['split']})"
                              for v, r in row["variants"].items()), flush=True)  # fmt: skip
        save(rows)  # what is measured so far survives a run cut short
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS))
    ap.add_argument("--shapes", nargs="*", default=None, help="NxK, default: the Llama shapes")
    ap.add_argument(
        "--build-only",
        action="store_true",
        help="compile the variants and stop (a later run loads them; e.g. while something else times)",
    )
    args = ap.parse_args()
    t0 = time.time()
    with multiprocessing.get_context("spawn").Pool(len(args.variants)) as pool:
        pool.map(build_only, args.variants)  # compiles in parallel; the loads below find the builds up to date
    if args.build_only:
        print(f"built {len(args.variants)} variants in {time.time() - t0:.0f} s", flush=True)
        return
    exts = {name: build(name) for name in args.variants}
    build_s = time.time() - t0
    print(f"built {len(exts)} variants in {build_s:.0f} s", flush=True)
    checks, tiles = {}, {}
    for name, ext in exts.items():
        rows = check(ext, quick=True, tiles=tuple(sorted(tiles_of(name))))
        wrong = {(r["tokens"], r["warpgroups"], *r["cluster"]) for r in rows if not r["ok"]}
        tiles[name] = tiles_of(name) - wrong  # a wrong extra tile is left out of the sweep, the variant kept
        checks[name] = {"ok": sum(r["ok"] for r in rows), "total": len(rows), "wrong_tiles": sorted(wrong),
                        "failures": [r for r in rows if not r["ok"]][:20]}  # fmt: skip
        print(
            f"{name}: stages",
            {f"{t}/{w}wg": ext.stages(t, w) for t, w, _, _ in sorted(tiles_of(name))},
            f"correctness {checks[name]['ok']}/{checks[name]['total']}",
            flush=True,
        )
    good = {name: ext for name, ext in exts.items() if tiles[name] >= WGMMA_TILES}  # every shipped tile right
    shapes = [parse_shape(s) for s in args.shapes] if args.shapes else llama_shapes()
    knobs = {v: VARIANTS[v] for v in args.variants}

    def save(rows: list[dict]) -> None:
        payload = {"variants": knobs, "build_s": build_s, "checks": checks, "sweep": rows}
        write_result(args.out, "wgmma_variants", payload | {"summary": summarize(rows, args.ms, good)})

    rows = sweep(good, tiles, shapes, args.ms, save) if good else []
    save(rows)
    print("median speedup over dense:", summarize(rows, args.ms, good))


def summarize(rows: list[dict], ms, variants) -> dict:
    """Median over the shapes of each variant's best/dense, per M and per regime."""
    summary = {}
    groups = {str(m): [m] for m in ms} | {"M<=16": [m for m in ms if m <= 16],
                                          "M 32-256": [m for m in ms if 32 <= m <= 256]}  # fmt: skip
    for label, group in groups.items():
        per = [r for r in rows if r["m"] in group]
        if per:
            summary[label] = {v: round(statistics.median(r["variants"][v]["speedup"] for r in per), 4)
                              for v in variants}  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
