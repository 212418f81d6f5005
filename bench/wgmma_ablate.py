"""What bounds a tile of the warpgroup kernel (csrc/spmm24_wgmma.cu): the same source built with parts of its work
taken out (SPARSE_LLM_WGMMA_ABLATE, a bit mask; every build but `base` gives wrong results), each tile and split
timed in every build side by side, with dense F.linear beside them.

    python bench/wgmma_ablate.py --out DIR [--shapes 1024x4096 ...] [--ms 256 512 1024]

Builds (in parallel, JIT, sm_90a): base (0), no_mma (1: the consumers wait for each stage and release it), no_copy
(2: the producer arrives on each stage's barrier without filling it), sync_only (3), no_split (4: every piece of a
split stores y, no reduction), no_w (8: no copies of W), no_x (16: no copies of x), no_store (32: no stores of y),
setup_only (64: every block leaves after its setup, i.e. what a grid of those blocks costs with no work), no_meta
(128: no copies of W's metadata, 16 bytes per row and stage, a third of the tensor-map copies' rows). Where a
part is what bounds the tile, taking it out takes the time down; where the time stays, the bound is elsewhere.

Per (shape, M, tile, split) and build: the median CUDA-graph replay after do_bench's 256 MB L2 clear (`cold`, as the
grid's graph column). Writes ``wgmma_ablate.json``. (h200/wgmma_ablate_4be82b7.json also has a `warm` column, events
around single replays without a clear: the host's enqueue of each replay fell inside those events, so it was
dropped; bench/NOTES.md, seventeenth round.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import random_packed, rel_err, write_result  # noqa: E402
from wgmma_variants import build_with  # noqa: E402

from sparse_llm.backends.sparse_mma import WGMMA_CHUNK  # noqa: E402
from sparse_llm.benchmark import parse_shape, time_graph_us  # noqa: E402

BUILDS = {"base": 0, "no_mma": 1, "no_copy": 2, "sync_only": 3, "no_split": 4, "no_w": 8, "no_x": 16,
          "no_store": 32, "setup_only": 64, "no_meta": 128}  # fmt: skip
SHAPES = ("1024x4096", "1024x8192", "4096x4096")
MS = (256, 512, 1024)
# (tokens, consumer warpgroups of 64 rows), no cluster
TILES = ((64, 1), (64, 2), (64, 4), (128, 1), (128, 2), (128, 4), (256, 1))
SPLITS = (1, 2, 4)


def build(name: str):
    return build_with(f"ablate_{name}", {"SPARSE_LLM_WGMMA_ABLATE": BUILDS[name]})


def build_only(name: str) -> None:
    build(name)


def times(fn) -> dict:
    return {"cold": time_graph_us(fn)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--builds", nargs="*", default=list(BUILDS), choices=list(BUILDS))
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS))
    args = ap.parse_args()
    t0 = time.time()
    with multiprocessing.get_context("spawn").Pool(len(args.builds)) as pool:
        pool.map(build_only, args.builds)
    exts = {name: build(name) for name in args.builds}
    build_s = time.time() - t0
    print(f"built {len(exts)} in {build_s:.0f} s", flush=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []

    def save() -> None:
        write_result(args.out, "wgmma_ablate", {"builds": {b: BUILDS[b] for b in args.builds}, "build_s": build_s,
                                                "rows": rows})  # fmt: skip

    for shape in args.shapes:
        n, k = parse_shape(shape)
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, dense)
            dense_t = times(lambda x=x, d=dense: F.linear(x, d))
            print(f"{n}x{k} M={m}: dense {dense_t['cold']:.1f} us", flush=True)
            for tokens, wgs in TILES:
                if tokens > 2 * m or n % (64 * wgs):
                    continue
                blocks = -(-m // tokens) * (n // (64 * wgs))
                for split in SPLITS:
                    if split > 1 and (k // (WGMMA_CHUNK * split) < 4 or blocks * split > sms):
                        continue
                    row = {"n": n, "k": k, "m": m, "tokens": tokens, "rows": 64 * wgs, "split": split,
                           "blocks": blocks * split, "dense": dense_t, "builds": {}}  # fmt: skip
                    for name, ext in exts.items():
                        args_ = (x, values, meta, None, tokens, wgs, 1, 1, split)
                        row["builds"][name] = times(lambda e=ext, a=args_: e.spmm24_wgmma(*a))
                        if name == "base":
                            row["base_error"] = rel_err(ext.spmm24_wgmma(*args_), ref)
                    rows.append(row)
                    print(f"  {tokens}x{64 * wgs} split {split} ({row['blocks']} blocks): "
                          + " ".join(f"{b} {t['cold']:.1f}" for b, t in row["builds"].items()),
                          flush=True)  # fmt: skip
            save()
    save()


if __name__ == "__main__":
    main()
