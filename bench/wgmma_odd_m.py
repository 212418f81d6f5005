"""Why odd M costs more on the warpgroup kernel (H100 grid: 28672x8192 M = 100 132 us against 116 us at M = 128
with the same tile): the tuned configuration of M's bucket, timed on x as it is and on x copied into a zero-padded
buffer of whole token tiles (the copy inside the timed call), next to dense F.linear, as CUDA-graph replays.

    python bench/wgmma_odd_m.py --out DIR [--table bench/results/crossover_h100.json]

Writes ``wgmma_odd_m.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_packed, rel_err, write_result  # noqa: E402

from sparse_llm.backends.sparse_mma import MmaConfig, spmm24_mma  # noqa: E402
from sparse_llm.benchmark import time_graph_us  # noqa: E402
from sparse_llm.tune import m_bucket  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((28672, 8192), (8192, 8192), (4096, 4096))
MS = (32, 33, 64, 96, 100, 112, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=str(ROOT / "bench" / "results" / "crossover_h100.json"))
    args = ap.parse_args()
    table = {(e["n"], e["k"]): e for e in json.loads(Path(args.table).read_text())}
    rows = []
    for n, k in SHAPES:
        dense, values, meta = random_packed(n, k, torch.bfloat16)
        for m in MS:
            cfg = MmaConfig(**table[(n, k)]["mma_configs"][str(m_bucket(m))])
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            rows_padded = -(-m // cfg.tokens) * cfg.tokens
            padded = torch.zeros(rows_padded, k, device="cuda", dtype=torch.bfloat16)

            def run_padded(x=x, padded=padded, cfg=cfg, m=m, values=values, meta=meta):
                padded[:m].copy_(x)
                return spmm24_mma(padded, values, meta, None, cfg)[:m]

            ref = F.linear(x, dense)
            row = {"n": n, "k": k, "m": m, "config": cfg.as_dict(),
                   "dense_us": time_graph_us(lambda x=x, d=dense: F.linear(x, d)),
                   "as_is_us": time_graph_us(lambda x=x, c=cfg, v=values, e=meta: spmm24_mma(x, v, e, None, c)),
                   "padded_us": time_graph_us(run_padded),
                   "error_as_is": rel_err(spmm24_mma(x, values, meta, None, cfg), ref),
                   "error_padded": rel_err(run_padded(), ref)}  # fmt: skip
            rows.append(row)
            print(f"{n}x{k} M={m} tile {cfg.tokens}: dense {row['dense_us']:.1f} us, as is {row['as_is_us']:.1f} us, "
                  f"padded {row['padded_us']:.1f} us", flush=True)
    write_result(args.out, "wgmma_odd_m", {"table": args.table, "rows": rows})


if __name__ == "__main__":
    main()
