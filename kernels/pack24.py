"""Triton packer: dense 2:4 weight -> canonical values + natural-order metadata (see sparse_llm/format.py)."""

import triton
import triton.language as tl

# One program packs BLOCK_R rows x BLOCK_Q chunks of 16 columns (8 x 512 columns): 8 KiB of bf16 per tile, enough
# loads in flight to stream; see bench/NOTES.md (pack) for the measured variants.
BLOCK_R = 8
BLOCK_Q = 32
NUM_WARPS = 4


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
    G: tl.constexpr = BLOCK_Q * 4  # groups of 4 per tile row
    pid_r = tl.program_id(0)
    pid_q = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows[:, None] < N
    rows64 = rows[:, None].to(tl.int64)
    # One contiguous tile load (16-byte vectors), split in registers into the 4 positions of each group:
    # (r, g, a, b) is column 4g + 2a + b.
    cols = pid_q * BLOCK_Q * 16 + tl.arange(0, BLOCK_Q * 16)
    w = tl.load(w_ptr + rows64 * K + cols[None, :], mask=row_ok & (cols[None, :] < K), other=0)
    even, odd = tl.split(tl.reshape(w, [BLOCK_R, G, 2, 2]))
    v0, v2 = tl.split(even)
    v1, v3 = tl.split(odd)
    first, second, nibble, count = _select_pair(v0, v1, v2, v3)

    vcols = pid_q * BLOCK_Q * 8 + tl.arange(0, BLOCK_Q * 8)
    vals = tl.reshape(tl.join(first, second), [BLOCK_R, BLOCK_Q * 8])
    tl.store(vals_ptr + rows64 * (K // 2) + vcols[None, :], vals, mask=row_ok & (vcols[None, :] < K // 2))

    nib_even, nib_odd = tl.split(tl.reshape(nibble, [BLOCK_R, BLOCK_Q, 2, 2]))
    n0, n2 = tl.split(nib_even)
    n1, n3 = tl.split(nib_odd)
    word = n0 | (n1 << 4) | (n2 << 8) | (n3 << 12)
    word = tl.where(word >= 32768, word - 65536, word)
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    tl.store(meta_ptr + rows64 * (K // 16) + q[None, :], word.to(tl.int16), mask=row_ok & (q[None, :] < K // 16))

    # First offending group of this tile (row-major), reported through one atomic min.
    g = pid_q * G + tl.arange(0, G)
    bad = tl.where(row_ok & (g[None, :] < K // 4) & (count > 2), rows64 * (K // 4) + g[None, :], num_groups)
    first_bad = tl.min(tl.min(bad, axis=1), axis=0)
    if first_bad < num_groups:
        tl.atomic_min(err_ptr, first_bad)
