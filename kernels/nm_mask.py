"""Triton kernels: score = |W|·scale in fp32 registers, keep the n largest of every m along K.

Two outputs from one read of W: a bool mask (any n:m, m a power of two), or for 2:4 the packed weight straight
away (values + natural-order metadata, the layout of ``sparse_llm/format.py``). No score tensor in memory.
Tie rule (``sparse_llm/masks.py``): equal scores keep the lower column index.
"""

import triton
import triton.language as tl

# One program scores BLOCK_N x BLOCK_K weights. H100, 28672x8192 bf16: 0.253 ms mask / 0.271 ms pack here, the
# best of 18 configurations (8-32 x 128-512 x 4/8 warps: up to 0.36 / 0.49 ms); bench/NOTES.md, mask kernels.
BLOCK_N = 16
BLOCK_K = 256
NUM_WARPS = 4

# Largest finite fp32: a score above it (Inf) or unordered with it (NaN) is flagged, never masked.
FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def load_scores(w_ptr, scale_ptr, rows, cols, N, K, stride_wn, HAS_SCALE: tl.constexpr):
    """Load a (rows x cols) tile of W and its fp32 scores |w| (· scale[col]); also the in-bounds mask."""
    inb = (rows[:, None] < N) & (cols[None, :] < K)
    w = tl.load(w_ptr + rows[:, None].to(tl.int64) * stride_wn + cols[None, :], mask=inb, other=0)
    # Same operations, same order as the torch reference: fp32 abs, then one fp32 multiply (exact ties survive).
    score = tl.abs(w.to(tl.float32))
    if HAS_SCALE:
        s = tl.load(scale_ptr + cols, mask=cols < K, other=0)
        score = score * s[None, :]
    return w, score, inb


@triton.jit
def flag_non_finite(score, inb, bad_ptr):
    """Set bad_ptr[0] = 1 when any in-bounds score is NaN or Inf (the launcher raises before returning)."""
    n_bad = tl.sum(tl.sum((inb & ~(score <= FLT_MAX)).to(tl.int32), axis=1), axis=0)
    if n_bad > 0:
        tl.store(bad_ptr, 1)


@triton.jit
def nm_keep(score, KEEP: tl.constexpr, M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N, BLOCK_K) bool: True for the KEEP largest scores of each group of M consecutive columns."""
    G: tl.constexpr = BLOCK_K // M
    s3 = tl.reshape(score, (BLOCK_N, G, M))
    pos = tl.arange(0, M)[None, None, :]
    # rank = how many entries of the group beat this one; a tie is won by the lower position.
    rank = tl.zeros((BLOCK_N, G, M), dtype=tl.int32)
    for j in tl.static_range(M):
        # Exact extraction of entry j (x + 0 = x for every finite or infinite x >= 0).
        sj = tl.sum(tl.where(pos == j, s3, 0.0), axis=2)[:, :, None]
        rank += ((sj > s3) | ((sj == s3) & (pos > j))).to(tl.int32)
    return tl.reshape(rank < KEEP, (BLOCK_N, BLOCK_K))


@triton.jit
def score_nm_mask_kernel(
    w_ptr,  # [N, K] fp32 / fp16 / bf16, unit stride along K
    scale_ptr,  # [K] fp32 (unused without HAS_SCALE)
    mask_ptr,  # [N, K] uint8 (a bool tensor's storage), contiguous
    bad_ptr,  # [1] int32, 0 on entry; set to 1 on a NaN/Inf score
    N,
    K,
    stride_wn,
    HAS_SCALE: tl.constexpr,
    KEEP: tl.constexpr,
    M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    w, score, inb = load_scores(w_ptr, scale_ptr, rows, cols, N, K, stride_wn, HAS_SCALE)
    flag_non_finite(score, inb, bad_ptr)
    keep = nm_keep(score, KEEP, M, BLOCK_N, BLOCK_K)
    tl.store(mask_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], keep.to(tl.uint8), mask=inb)


@triton.jit
def score_pack24_kernel(
    w_ptr,  # [N, K] fp32 / fp16 / bf16, unit stride along K
    scale_ptr,  # [K] fp32 (unused without HAS_SCALE)
    vals_ptr,  # [N, K/2] W's dtype, contiguous
    meta_ptr,  # [N, K/16] int16, contiguous
    bad_ptr,  # [1] int32, 0 on entry; set to 1 on a NaN/Inf score
    N,
    K,
    stride_wn,
    HAS_SCALE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_k = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    w, score, inb = load_scores(w_ptr, scale_ptr, rows, cols, N, K, stride_wn, HAS_SCALE)
    flag_non_finite(score, inb, bad_ptr)
    keep = nm_keep(score, 2, 4, BLOCK_N, BLOCK_K).to(tl.int32)

    G: tl.constexpr = BLOCK_K // 4
    # Split every group of 4 into its positions: (G, 2, 2) -> last axis = position % 2, then position // 2.
    k_even, k_odd = tl.split(tl.reshape(keep, (BLOCK_N, G, 2, 2)))
    k0, k2 = tl.split(k_even)
    k1, k3 = tl.split(k_odd)
    w_even, w_odd = tl.split(tl.reshape(w, (BLOCK_N, G, 2, 2)))
    w0, w2 = tl.split(w_even)
    w1, w3 = tl.split(w_odd)
    # Exactly two positions are kept per group: the lower and the higher one, selected bit-exactly (no arithmetic).
    low = tl.where(k0 != 0, 0, tl.where(k1 != 0, 1, 2))
    high = tl.where(k3 != 0, 3, tl.where(k2 != 0, 2, 1))
    first = tl.where(k0 != 0, w0, tl.where(k1 != 0, w1, w2))
    second = tl.where(k3 != 0, w3, tl.where(k2 != 0, w2, w1))

    row_off = rows[:, None].to(tl.int64)
    vals = tl.reshape(tl.join(first, second), (BLOCK_N, BLOCK_K // 2))
    vcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    tl.store(vals_ptr + row_off * (K // 2) + vcols[None, :], vals, mask=(rows[:, None] < N) & (vcols[None, :] < K // 2))

    # 4 groups per int16, the lowest columns in the lowest bits.
    nibbles = tl.reshape(low | (high << 2), (BLOCK_N, BLOCK_K // 16, 4))
    word = tl.sum(nibbles << (tl.arange(0, 4) * 4)[None, None, :], axis=2)
    word = tl.where(word >= 32768, word - 65536, word)
    mcols = pid_k * (BLOCK_K // 16) + tl.arange(0, BLOCK_K // 16)
    tl.store(
        meta_ptr + row_off * (K // 16) + mcols[None, :],
        word.to(tl.int16),
        mask=(rows[:, None] < N) & (mcols[None, :] < K // 16),
    )
