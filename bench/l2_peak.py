"""How many bytes per second the GPU's L2 cache gives the SMs, against DRAM: the yardstick for "L2-bound" in
bench/NOTES.md (the warpgroup kernel's tiles read W and x through L2; ncu reports L2 throughput as a share of a peak
that was never measured on its own here).

    python bench/l2_peak.py --out DIR

A Triton kernel reads a bf16 buffer in 16-byte loads that bypass L1 (``.cg``), every program its own interleaved
slices, ``reps`` passes over the whole buffer in one launch, with 4 or 8 programs per SM; buffers of 8-32 MB stay in
L2 after the first pass, 1 GB does not. Time: median between CUDA events (no cache clear), after a warm-up call.
Writes ``l2_peak.json``: bytes read per second for each size and grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from sparse_llm.benchmark import events_us  # noqa: E402

SIZES_MB = (8, 16, 24, 32, 1024)
BLOCK = 4096  # elements per program and step: 8 KB


@triton.jit
def _read(src, out, n, reps, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(reps):
        for start in range(pid * BLOCK, n, step):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(src + offs, mask=offs < n, other=0.0, cache_modifier=".cg").to(tl.float32)
    tl.store(out + pid, tl.sum(acc))


def read_rate(size_mb: int, per_sm: int, reps: int) -> float:
    """Bytes per second read by ``reps`` passes over a ``size_mb`` MB buffer with ``per_sm`` programs per SM."""
    n = size_mb * (1 << 20) // 2
    src = torch.ones(n, device="cuda", dtype=torch.bfloat16)  # every element read once per pass adds exactly 1
    grid = (torch.cuda.get_device_properties(0).multi_processor_count * per_sm,)
    out = torch.empty(grid[0], device="cuda", dtype=torch.float32)
    _read[grid](src, out, n, reps, BLOCK=BLOCK)  # compiles, and the first pass of every later call finds L2 warm
    us = events_us(lambda: _read[grid](src, out, n, reps, BLOCK=BLOCK), reps=10, warmup=2)
    assert out.double().sum().item() == n * reps, "the programs did not read every element once per pass"
    return 2 * n * reps / (us * 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    for size in SIZES_MB:
        for per_sm in (4, 8):
            reps = 1 if size > 64 else 20
            rate = read_rate(size, per_sm, reps)
            rows.append({"size_mb": size, "programs_per_sm": per_sm, "passes": reps, "bytes_per_s": rate})
            print(f"{size} MB, {per_sm} programs per SM, {reps} passes: {rate / 1e12:.2f} TB/s", flush=True)
    l2 = max(r["bytes_per_s"] for r in rows if r["size_mb"] <= 32)
    dram = max(r["bytes_per_s"] for r in rows if r["size_mb"] > 64)
    path = write_result(args.out, "l2_peak", {"rows": rows, "l2_best_bytes_per_s": l2, "dram_best_bytes_per_s": dram})
    print(f"L2 best {l2 / 1e12:.2f} TB/s, DRAM best {dram / 1e12:.2f} TB/s; wrote {path}")


if __name__ == "__main__":
    main()
