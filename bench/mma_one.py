"""Runs one configuration of the sparse tensor-core kernel a few times: a target for profilers.

    ncu --set full -k regex:spmm24 --launch-skip 2 --launch-count 1 python bench/mma_one.py 28672 8192 128 32 64 3 8 4
(N K M rows tokens stages warps split)
"""

from __future__ import annotations

import sys

import torch

from sparse_llm import Sparse24Weight
from sparse_llm.backends.sparse_mma import MmaConfig, spmm24_mma


def main() -> None:
    n, k, m, rows, tokens, stages, warps, split = (int(a) for a in sys.argv[1:9])
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    keep = torch.rand(n, k // 4, 4, device="cuda").argsort(-1) < 2
    p = Sparse24Weight.from_dense(w * keep.reshape(n, k))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    cfg = MmaConfig(rows, tokens, stages, split, warps)
    for _ in range(4):
        spmm24_mma(x, p.values, p.meta, None, cfg)
    torch.cuda.synchronize()
    print("ran", cfg)


if __name__ == "__main__":
    main()
