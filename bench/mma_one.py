"""Runs one configuration of the sparse tensor-core kernel a few times: a target for profilers.

    ncu --set full --profile-from-start off python bench/mma_one.py 28672 8192 128 32 64 3 8 4
(N K M rows tokens stages warps split); the warpgroup kernel: N K M 16 tokens 0 warps split wgmma [cluster_tokens
cluster_rows], with 4 warps per consumer warpgroup and cluster blocks (1 or 2) along tokens (sharing W) and rows
(sharing x); cuSPARSELt (the extension, its plan searched on the first call): N K M cusparselt; dense
(F.linear, cuBLAS): N K M dense. Only the last call
runs inside cudaProfilerStart/Stop (ncu --profile-from-start off profiles that one alone).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_packed  # noqa: E402

from sparse_llm.backends import cusparselt  # noqa: E402
from sparse_llm.backends.sparse_mma import MmaConfig, spmm24_mma, wgmma_config  # noqa: E402


def main() -> None:
    n, k, m = (int(a) for a in sys.argv[1:4])
    dense, values, meta = random_packed(n, k, torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    if sys.argv[4] == "dense":  # cuBLAS on the same layer's dense weight (the reference the ratios are taken to)
        call, cfg = (lambda: torch.nn.functional.linear(x, dense)), "dense"
    elif sys.argv[4] == "cusparselt":
        compressed = cusparselt.compress_values(values, meta)[0]
        call, cfg = (lambda: cusparselt.cusparselt_linear(x, compressed, n, k)), "cuSPARSELt"
    else:
        rows, tokens, stages, warps, split = (int(a) for a in sys.argv[4:9])
        if len(sys.argv) > 9 and sys.argv[9] == "wgmma":
            cluster = (int(sys.argv[10]), int(sys.argv[11])) if len(sys.argv) > 11 else (1, 1)
            cfg = wgmma_config(tokens, warps // 4, split, cluster)
        else:
            cfg = MmaConfig(rows, tokens, stages, split, warps)
        call = lambda: spmm24_mma(x, values, meta, None, cfg)  # noqa: E731
    for _ in range(4):
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("ran", cfg)


if __name__ == "__main__":
    main()
