"""What cuSPARSELt's split-K and stream-K variants give per Llama shape and M, against the plain algorithm ids.

    python bench/cusparselt_search.py --out DIR [--ms 128 256 ...] [--quick] [--shapes 4096x4096 ...]
    python bench/cusparselt_search.py --out DIR --repeat 5 --shapes 4096x4096 --ms 2048   # is the search stable?

For each shape and M: the extension's algorithm search in mode ``ids`` (every config id, cuSPARSELt's own split
choice) and in mode ``full`` (also split-K 2/4/8, explicit SPLITK mode, stream-K, data-parallel; see
``candidates_for`` in csrc/cusparselt_linear.cpp), each followed by a CUDA-graph timing of the chosen plan, next to
dense F.linear in the same run; the output of the ``full`` choice is checked against F.linear. Writes
``cusparselt_search.json`` with every candidate's search time. ``--repeat R`` runs the ``ids`` search R times
per shape and M (the extension's caches cleared each time) and times each choice: which algorithm a search finds,
and how fast it is, from one search to the next (``cusparselt_search_repeat.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_shapes, random_packed, rel_err, write_result  # noqa: E402

from sparse_llm.backends._build import load_extension  # noqa: E402
from sparse_llm.backends.cusparselt import compress_values, cusparselt_linear  # noqa: E402
from sparse_llm.benchmark import parse_shape, time_graph_us  # noqa: E402

MS = (64, 128, 256, 512, 1000, 1024, 2048, 4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ms", type=int, nargs="+", default=list(MS))
    parser.add_argument("--quick", action="store_true", help="three shapes instead of ten")
    parser.add_argument("--shapes", nargs="+", help="NxK shapes instead of the Llama ones")
    parser.add_argument("--repeat", type=int, default=1, help="searches per shape and M (stability)")
    args = parser.parse_args()
    ext = load_extension()
    shapes = llama_shapes()
    if args.quick:
        shapes = [(1024, 4096), (8192, 8192), (28672, 8192)]
    if args.shapes:
        shapes = [parse_shape(s) for s in args.shapes]
    if args.repeat > 1:
        repeat(ext, shapes, args.ms, args.repeat, args.out)
        return
    rows = []
    for n, k in shapes:
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        compressed, _ = compress_values(values, meta)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_dense = time_graph_us(lambda x=x, w=dense: F.linear(x, w))
            row = {"n": n, "k": k, "m": m, "dense_us": t_dense}
            for mode in ("ids", "full"):
                os.environ["SPARSE_LLM_CUSPARSELT_SEARCH"] = mode
                ext.clear_cache()
                out = cusparselt_linear(x, compressed, n, k)  # searches
                plan = ext.plan_info(x, None, n, k)
                us = time_graph_us(lambda x=x, c=compressed, n=n, k=k: cusparselt_linear(x, c, n, k))
                row[mode] = {"us": us, "speedup": t_dense / us, "config_id": plan[0], "split_k": plan[1],
                             "split_mode": plan[2], "rows": plan[3]}  # fmt: skip
                if mode == "full":
                    row["rel_err"] = rel_err(out, F.linear(x.float(), dense.float()))
                    row["candidates"] = [{"config_id": c[0], "split_k": c[1], "split_mode": c[2], "us": 1e3 * c[3]}
                                         for c in ext.last_search()]  # fmt: skip
            rows.append(row)
            print(f"{n}x{k} M={m}: dense {t_dense:.1f}  ids {row['ids']['us']:.1f} ({row['ids']['speedup']:.2f}x)  "
                  f"full {row['full']['us']:.1f} ({row['full']['speedup']:.2f}x, id {row['full']['config_id']} "
                  f"split {row['full']['split_k']} mode {row['full']['split_mode']}) err {row['rel_err']:.1e}",
                  flush=True)  # fmt: skip
        write_result(args.out, "cusparselt_search", {"rows": rows})
    del os.environ["SPARSE_LLM_CUSPARSELT_SEARCH"]
    bad = [r for r in rows if not r["rel_err"] < 1e-2]
    summary = {}
    for m in args.ms:
        r = [x for x in rows if x["m"] == m]
        summary[m] = {"ids": statistics.median(x["ids"]["speedup"] for x in r),
                      "full": statistics.median(x["full"]["speedup"] for x in r)}  # fmt: skip
        print(f"M={m}: median speedup over dense, ids {summary[m]['ids']:.2f}x, full {summary[m]['full']:.2f}x")
    write_result(args.out, "cusparselt_search", {"rows": rows, "summary": summary, "wrong": len(bad)})
    if bad:
        raise SystemExit(f"{len(bad)} wrong products, e.g. {bad[0]['n']}x{bad[0]['k']} M={bad[0]['m']}")


def repeat(ext, shapes, ms, times: int, out: Path) -> None:
    """``times`` searches (mode ``ids``) per shape and M, each timed as a CUDA-graph replay beside dense."""
    os.environ["SPARSE_LLM_CUSPARSELT_SEARCH"] = "ids"
    rows = []
    for n, k in shapes:
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        compressed, _ = compress_values(values, meta)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"n": n, "k": k, "m": m, "dense_us": time_graph_us(lambda x=x, w=dense: F.linear(x, w)),
                   "searches": []}  # fmt: skip
            for _ in range(times):
                ext.clear_cache()
                cusparselt_linear(x, compressed, n, k)  # searches
                plan = ext.plan_info(x, None, n, k)
                us = time_graph_us(lambda x=x, c=compressed, n=n, k=k: cusparselt_linear(x, c, n, k))
                best = min(ext.last_search(), key=lambda c: c[3])
                row["searches"].append({"config_id": plan[0], "split_k": plan[1], "us": us,
                                        "search_us": 1e3 * best[3]})  # fmt: skip
            rows.append(row)
            print(f"{n}x{k} M={m}: dense {row['dense_us']:.1f} us; searches (id: us) "
                  + ", ".join(f"{r['config_id']}: {r['us']:.1f}" for r in row["searches"]), flush=True)  # fmt: skip
    del os.environ["SPARSE_LLM_CUSPARSELT_SEARCH"]
    write_result(out, "cusparselt_search_repeat", {"rows": rows})


if __name__ == "__main__":
    main()
