"""Triton kernels: accumulate Σx² per input column of an activation (M, K) into an fp32 (K,) buffer.

Two deterministic stages (no atomics on the data, so the sum does not depend on scheduling):
``sq_norm_partial_kernel`` — program (column block, row split) squares and sums its rows in fp32 registers and
writes one partial row; ``sq_norm_reduce_kernel`` adds the partials in split order into the accumulator, unless
a partial was NaN/Inf and SKIP_ON_BAD (then the accumulator is left untouched and the launcher raises; without
SKIP_ON_BAD the NaN/Inf reaches the accumulator, for callers that check it once at the end instead of syncing
on every call).
"""

import triton
import triton.language as tl

# One program streams BLOCK_M x BLOCK_K tiles down its row split (bf16: 16-byte loads, 8 per thread per tile).
# H100, 16384x8192 bf16: 36 configurations all within 0.117-0.15 ms (eager, launch-noise bound); this one gives
# 0.101 ms in a CUDA graph, 88% of the copy floor (bench/NOTES.md, mask kernels).
BLOCK_M = 32
BLOCK_K = 256
NUM_WARPS = 4
# Programs per SM the row splits aim at: enough loads in flight to cover the memory latency.
PROGRAMS_PER_SM = 4
# Columns per program of the reduction stage.
REDUCE_BLOCK_K = 1024

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def sq_norm_partial_kernel(
    x_ptr,  # [M, K] fp32 / fp16 / bf16, unit stride along K
    part_ptr,  # [S, K] fp32: one partial Σx² row per row split
    bad_ptr,  # [1] int32, 0 on entry; set to 1 when a partial is NaN/Inf
    M,
    K,
    stride_xm,
    rows_per_split,  # a multiple of BLOCK_M
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_s = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_start = pid_s * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, M)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for m0 in range(row_start, row_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        inb = (rows[:, None] < row_end) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=inb, other=0)
        x = x.to(tl.float32)
        acc += x * x
    part = tl.sum(acc, axis=0)
    # NaN/Inf anywhere in the column (or an fp32 overflow of Σx²) reaches the partial sum.
    if tl.sum(((cols < K) & ~(part <= FLT_MAX)).to(tl.int32), axis=0) > 0:
        tl.store(bad_ptr, 1)
    tl.store(part_ptr + pid_s.to(tl.int64) * K + cols, part, mask=cols < K)


@triton.jit
def sq_norm_reduce_kernel(
    part_ptr,  # [S, K] fp32
    acc_ptr,  # [K] fp32, updated in place
    bad_ptr,  # [1] int32: when set and SKIP_ON_BAD, the accumulator is left as it was
    S,
    K,
    SKIP_ON_BAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    if not SKIP_ON_BAD or tl.load(bad_ptr) == 0:
        total = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for s in range(0, S):
            total += tl.load(part_ptr + s * K + cols, mask=cols < K, other=0)
        acc = tl.load(acc_ptr + cols, mask=cols < K, other=0)
        tl.store(acc_ptr + cols, acc + total, mask=cols < K)
