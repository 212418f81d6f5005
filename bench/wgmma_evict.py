"""The evict-first L2 policy on W's copies in the warpgroup kernel (csrc/spmm24_wgmma.cu): faster or not, and where.

    python bench/wgmma_evict.py --out DIR [--tables TABLE.json ...] [--ms 1 16 ...] [--shapes NxK ...]

Per Llama shape and M, the tile the tuned table gives (``sparse_llm.tune.mma_config``; by default the committed H100
and H200 tables), run with W's copies under the default L2 policy and under evict-first, beside dense ``F.linear``,
in the two columns of the layer grid that differ in what L2 holds before a call:

- ``graph``: one CUDA-graph replay after do_bench's 256 MB memset (``time_graph_us``): L2 full of dirty lines;
- ``stream``: distinct copies of the layer back to back in one graph (``time_stream_us``): L2 holds the previous
  copies' clean weight lines.

The policies (the default; evict-first; evict-first without L2's 256-byte promotion of W's copies; no promotion) are
timed in alternation (A B C D D C B A), each gets the mean of its two medians; all must give the same bits. Writes
``wgmma_evict.json``: every time, the ratios to dense, and the medians over the shapes per M.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import COMMITTED_TABLES, llama_shapes, random_packed, use_tables, write_result  # noqa: E402

from sparse_llm import tune  # noqa: E402
from sparse_llm.backends._build import load_wgmma_extension  # noqa: E402
from sparse_llm.backends.sparse_mma import wgmma_w_policy  # noqa: E402
from sparse_llm.benchmark import _l2_bytes, parse_shape, stream_count, time_graph_us, time_stream_us  # noqa: E402

MS = (1, 16, 64, 128, 256, 512, 1024)
# name: (evict-first policy on W's copies, L2's 256-byte promotion of W's copies)
POLICIES = {"normal": (False, True), "evict_first": (True, True), "evict_first_nopromo": (True, False),
            "nopromo": (False, False)}  # fmt: skip


def alternating(fns: dict, measure) -> dict[str, float]:
    """``measure`` of each entry in the order A B ... B A; each gets the mean of its two times."""
    times = {name: [] for name in fns}
    for name in [*fns, *reversed(fns)]:
        times[name].append(measure(fns[name]))
    return {name: sum(t) / len(t) for name, t in times.items()}


def bench_m(ext, weights: list, m: int) -> dict | None:
    """One (shape, M): both policies and dense, in both columns; None where the tuned tile is not a warpgroup one."""
    dense, values, meta = weights[0]
    n, k = dense.shape
    cfg = tune.mma_config(n, k, m, torch.bfloat16, torch.device("cuda"))
    if not cfg.wgmma:
        return None
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    args = (*cfg.wgmma_tile, cfg.split)

    def call(v: torch.Tensor, mt: torch.Tensor, policy: tuple[bool, bool]) -> torch.Tensor:
        return ext.spmm24_wgmma(x, v, mt, None, *args, *policy)

    outs = [call(values, meta, policy) for policy in POLICIES.values()]
    same = all(torch.equal(outs[0], out) for out in outs[1:])
    graph = alternating({p: (lambda f=f: call(values, meta, f)) for p, f in POLICIES.items()}, time_graph_us)
    stream = alternating({p: [lambda v=v, mt=mt, f=f: call(v, mt, f) for _, v, mt in weights]
                          for p, f in POLICIES.items()}, time_stream_us)  # fmt: skip
    dense_graph = time_graph_us(lambda: F.linear(x, dense))
    dense_stream = time_stream_us([lambda w=w: F.linear(x, w) for w, _, _ in weights])
    return {
        "n": n, "k": k, "m": m, "config": cfg.as_dict(), "same_bits": same,
        "auto_policy": wgmma_w_policy(m, values.nbytes + meta.nbytes, _l2_bytes()),
        "copies": len(weights), "dense_graph_us": dense_graph, "dense_stream_us": dense_stream,
        **{f"{p}_graph_us": graph[p] for p in POLICIES}, **{f"{p}_stream_us": stream[p] for p in POLICIES},
        **{f"{p}_graph_speedup": dense_graph / graph[p] for p in POLICIES},
        **{f"{p}_stream_speedup": dense_stream / stream[p] for p in POLICIES},
    }  # fmt: skip


def summarize(rows: list[dict]) -> dict:
    """Median over the shapes, per M, of ours/dense under each policy in each column."""
    out = {}
    for m in sorted({r["m"] for r in rows}):
        per = [r for r in rows if r["m"] == m]
        out[str(m)] = {f"{p}_{c}": round(statistics.median(r[f"{p}_{c}_speedup"] for r in per), 4)
                       for p in POLICIES for c in ("graph", "stream")}  # fmt: skip
        out[str(m)]["shapes"] = len(per)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tables", type=Path, nargs="*", default=COMMITTED_TABLES,
                    help="tuned tables (default: the committed H100 and H200 ones)")  # fmt: skip
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS))
    ap.add_argument("--shapes", nargs="*", default=None, help="NxK, default: the Llama shapes")
    args = ap.parse_args()
    use_tables(args.tables)
    ext = load_wgmma_extension()
    shapes = [parse_shape(s) for s in args.shapes] if args.shapes else llama_shapes()
    rows: list[dict] = []
    for n, k in shapes:
        # copies of the layer whose weights span several L2 caches, as in the grid's stream column
        weights = [random_packed(n, k, torch.bfloat16) for _ in range(stream_count(n, k))]
        for m in args.ms:
            row = bench_m(ext, weights, m)
            if row is None:
                print(f"{n}x{k} M={m}: the tuned tile is not the warpgroup kernel's, skipped", flush=True)
                continue
            rows.append(row)
            us = " ".join(f"{key[:-3]} {val:.1f}" for key, val in row.items() if key.endswith("_us"))
            print(f"{n}x{k} M={m} {row['config']}: {us} | same bits {row['same_bits']}", flush=True)
        del weights
        tables = [str(t) for t in args.tables]
        write_result(args.out, "wgmma_evict", {"tables": tables, "rows": rows, "summary": summarize(rows)})
    print(json.dumps(summarize(rows), indent=1))


if __name__ == "__main__":
    main()
