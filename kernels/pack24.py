"""Triton packer: dense 2:4 weight -> canonical values + natural-order metadata (see sparse_llm/format.py)."""

import triton
import triton.language as tl

# One program packs BLOCK_R rows x BLOCK_Q chunks of 16 columns. 16 x 64 chunks = 16 x 1024 columns: large
# enough tiles to keep many loads in flight on the H100 (bench/NOTES.md, pack section).
BLOCK_R = 16
BLOCK_Q = 64
NUM_WARPS = 8


@triton.jit
def _select_pair(v0, v1, v2, v3):
    """One group of 4: the two kept values, the metadata nibble and the count of non-zeros."""
    # Compare in fp32: Triton's CPU interpreter compares bf16 by its bits, so -0.0 would count as non-zero.
    nz0 = v0.to(tl.float32) != 0
    nz1 = v1.to(tl.float32) != 0
    nz2 = v2.to(tl.float32) != 0
    nz3 = v3.to(tl.float32) != 0
    count = nz0.to(tl.int32) + nz1.to(tl.int32) + nz2.to(tl.int32) + nz3.to(tl.int32)
    # Fill groups with < 2 non-zeros with their lowest zero positions (the format's rule).
    need = 2 - count
    z0 = (~nz0).to(tl.int32)
    z1 = (~nz1).to(tl.int32)
    z2 = (~nz2).to(tl.int32)
    z3 = (~nz3).to(tl.int32)
    s0 = nz0 | ((z0 == 1) & (z0 <= need))
    s1 = nz1 | ((z1 == 1) & (z0 + z1 <= need))
    s2 = nz2 | ((z2 == 1) & (z0 + z1 + z2 <= need))
    s3 = nz3 | ((z3 == 1) & (z0 + z1 + z2 + z3 <= need))
    low = tl.where(s0, 0, tl.where(s1, 1, tl.where(s2, 2, 3)))
    high = tl.where(s3, 3, tl.where(s2, 2, tl.where(s1, 1, 0)))
    first = tl.where(low == 0, v0, tl.where(low == 1, v1, tl.where(low == 2, v2, v3)))
    second = tl.where(high == 3, v3, tl.where(high == 2, v2, tl.where(high == 1, v1, v0)))
    return first, second, low | (high << 2), count


@triton.jit
def _pack_group(w_row, vals_row, q, col_mask, j: tl.constexpr):
    """Pack group j (0..3) of each 16-column chunk q; returns its nibble and count."""
    base = w_row + q * 16 + j * 4
    v0 = tl.load(base + 0, mask=col_mask, other=0)
    v1 = tl.load(base + 1, mask=col_mask, other=0)
    v2 = tl.load(base + 2, mask=col_mask, other=0)
    v3 = tl.load(base + 3, mask=col_mask, other=0)
    first, second, nibble, count = _select_pair(v0, v1, v2, v3)
    out = vals_row + q * 8 + j * 2
    tl.store(out, first, mask=col_mask)
    tl.store(out + 1, second, mask=col_mask)
    return nibble, count


@triton.jit
def pack_2to4_kernel(
    w_ptr,  # [N, K] fp32 / fp16 / bf16, contiguous
    vals_ptr,  # [N, K/2] same dtype
    meta_ptr,  # [N, K/16] int16
    err_ptr,  # [1] int64: smallest flat group index (row * K/4 + group) with > 2 non-zeros, else num_groups
    N,
    num_groups,  # N * K / 4, the "no error" value
    K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_q = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask = (rows[:, None] < N) & (q[None, :] < K // 16)
    w_row = w_ptr + rows[:, None].to(tl.int64) * K
    vals_row = vals_ptr + rows[:, None].to(tl.int64) * (K // 2)
    qq = q[None, :]
    n0, c0 = _pack_group(w_row, vals_row, qq, mask, 0)
    n1, c1 = _pack_group(w_row, vals_row, qq, mask, 1)
    n2, c2 = _pack_group(w_row, vals_row, qq, mask, 2)
    n3, c3 = _pack_group(w_row, vals_row, qq, mask, 3)
    word = n0 | (n1 << 4) | (n2 << 8) | (n3 << 12)
    word = tl.where(word >= 32768, word - 65536, word)
    tl.store(meta_ptr + rows[:, None].to(tl.int64) * (K // 16) + qq, word.to(tl.int16), mask=mask)
    # First offending group of this tile (row-major), reported through one atomic min.
    group_base = rows[:, None].to(tl.int64) * (K // 4) + qq.to(tl.int64) * 4
    big = num_groups + tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.int64)
    bad = tl.where(mask & (c0 > 2), group_base, big)
    bad = tl.minimum(bad, tl.where(mask & (c1 > 2), group_base + 1, big))
    bad = tl.minimum(bad, tl.where(mask & (c2 > 2), group_base + 2, big))
    bad = tl.minimum(bad, tl.where(mask & (c3 > 2), group_base + 3, big))
    first_bad = tl.min(tl.min(bad, axis=1), axis=0)
    if first_bad < num_groups:
        tl.atomic_min(err_ptr, first_bad)
