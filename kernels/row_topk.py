"""Triton kernels: per row, keep exactly the KEEP largest scores |W|·scale (Wanda unstructured), by selection.

Scores are >= 0, so their fp32 bit patterns (sign bit cleared, which also folds -0.0 onto 0) order like the
values. A search on those 31-bit integers brackets the threshold T = the KEEP-th largest score between lo
(count(bits >= lo) >= KEEP) and hi (count(bits >= hi) <= KEEP). Each step counts the row against one probe:
the count interpolated linearly between the bracket's ends (regula falsi: few steps on smooth data), or the
midpoint whenever the previous step failed to halve the bracket (so never more than 2 x 31 steps, ties
included). It stops as soon as some probe has exactly KEEP scores above it, or when the bracket is one bit
pattern wide (ties at T). A last pass keeps every score above the band and, inside it, the first ones in
column order (equal scores keep the lower column index, as ``sparse_llm/masks.py``). No sort.

One program per row. ``row_topk_resident_kernel`` holds the row's scores in registers (K <= MAX_RESIDENT_K);
``row_topk_chunked_kernel`` recomputes them from W (L2-resident) on every pass, for any K.
"""

import triton
import triton.language as tl

# Rows up to this many columns stay in registers (32768 fp32 over 16 warps = 64 registers per thread): on the
# H100, 8192x28672 took 1.27 ms resident against 2.84 ms chunked (bench/NOTES.md, mask kernels).
MAX_RESIDENT_K = 32768
# Chunk of the any-K kernel.
CHUNK_K = 4096

FLT_MAX = tl.constexpr(3.4028234663852886e38)
# Bit pattern of FLT_MAX: the bisection's upper end never exceeds it + 1 (no int32 overflow on NaN rows).
FLT_MAX_BITS = tl.constexpr(0x7F7FFFFF)


def resident_num_warps(block_k: int) -> int:
    """Warps for a resident row of ``block_k`` columns: 4 up to 8192 columns, then 2048 columns per warp.

    H100, 28672x8192: 2 warps 1.19 ms (255 registers, spills), 4 warps 1.00 ms (213 registers), 8 warps 1.02 ms;
    8192x28672 (block 32768): 4 warps 4.1 ms (spills), 8 warps 1.32 ms, 16 warps 1.27 ms.
    """
    return max(4, min(16, block_k // 2048))


@triton.jit
def next_probe(lo, hi, c_lo, c_hi, KEEP, bisect):
    """The next threshold to count against, strictly inside (lo, hi): regula falsi or the midpoint."""
    mid = lo + (hi - lo) // 2
    # Linear interpolation of the count between the ends, in fp32: only a guess (clamped into the bracket), and
    # an int64 division here costs as much as counting a 64-element slice of the row (every thread does it).
    frac = (c_lo - KEEP).to(tl.float32) / (c_lo - c_hi).to(tl.float32)
    guess = lo + (frac * (hi - lo).to(tl.float32)).to(tl.int32)
    guess = tl.minimum(tl.maximum(guess, lo + 1), hi - 1)
    return tl.where(bisect, mid, guess)


@triton.jit
def row_bits(w_ptr, scale_ptr, row_off, cols, K, bad_ptr, HAS_SCALE: tl.constexpr):
    """Score bits of one row chunk (-1 outside the row); flags NaN/Inf scores into bad_ptr[0]."""
    inb = cols < K
    w = tl.load(w_ptr + row_off + cols, mask=inb, other=0)
    # Same operations, same order as the torch reference: fp32 abs, then one fp32 multiply.
    score = tl.abs(w.to(tl.float32))
    if HAS_SCALE:
        score = score * tl.load(scale_ptr + cols, mask=inb, other=0)
    if tl.sum((inb & ~(score <= FLT_MAX)).to(tl.int32), axis=0) > 0:
        tl.store(bad_ptr, 1)
    bits = score.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    # Out-of-row columns get -1: below every threshold the bisection tries (all >= 0), so never counted.
    return tl.where(inb, tl.minimum(bits, FLT_MAX_BITS), -1)


@triton.jit
def row_topk_resident_kernel(
    w_ptr,  # [N, K] fp32 / fp16 / bf16, unit stride along K
    scale_ptr,  # [K] fp32 (unused without HAS_SCALE)
    mask_ptr,  # [N, K] uint8 (a bool tensor's storage), contiguous
    bad_ptr,  # [1] int32, 0 on entry; set to 1 on a NaN/Inf score
    K,
    KEEP,  # scores kept per row, 0..K
    stride_wn,
    HAS_SCALE: tl.constexpr,
    BLOCK_K: tl.constexpr,  # next power of two >= K
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    bits = row_bits(w_ptr, scale_ptr, row * stride_wn, cols, K, bad_ptr, HAS_SCALE)
    # Invariant: count(bits >= lo) = c_lo >= KEEP and count(bits >= hi) = c_hi <= KEEP.
    lo = tl.min(tl.where(cols < K, bits, FLT_MAX_BITS), axis=0)
    c_lo = K
    hi = tl.max(bits, axis=0) + 1
    c_hi = 0
    bisect = tl.full((), 0, tl.int1)
    while (hi - lo > 1) & (c_lo != KEEP) & (c_hi != KEEP):
        probe = next_probe(lo, hi, c_lo, c_hi, KEEP, bisect)
        width = hi - lo
        c = tl.sum((bits >= probe).to(tl.int32), axis=0)
        if c >= KEEP:
            lo = probe
            c_lo = c
        else:
            hi = probe
            c_hi = c
        bisect = (hi - lo) > (width + 1) // 2  # bisection leaves at most ceil(width / 2)
    # Everything >= hi is kept; of the band [lo, hi) the first KEEP - c_hi in column order (the whole band when
    # c_lo == KEEP; only ties at T = lo when the band is one value wide).
    band = ((bits >= lo) & (bits < hi)).to(tl.int32)
    rank = tl.cumsum(band, axis=0) - band
    keep = (bits >= hi) | ((band != 0) & (rank < KEEP - c_hi))
    tl.store(mask_ptr + row * K + cols, keep.to(tl.uint8), mask=cols < K)


@triton.jit
def row_topk_chunked_kernel(
    w_ptr,  # [N, K] fp32 / fp16 / bf16, unit stride along K
    scale_ptr,  # [K] fp32 (unused without HAS_SCALE)
    mask_ptr,  # [N, K] uint8 (a bool tensor's storage), contiguous
    bad_ptr,  # [1] int32, 0 on entry; set to 1 on a NaN/Inf score
    K,
    KEEP,  # scores kept per row, 0..K
    stride_wn,
    HAS_SCALE: tl.constexpr,
    BLOCK_K: tl.constexpr,  # chunk of columns per step
):
    row = tl.program_id(0).to(tl.int64)
    row_off = row * stride_wn
    cols = tl.arange(0, BLOCK_K)
    top = 0
    lo = FLT_MAX_BITS
    for k0 in range(0, K, BLOCK_K):
        bits = row_bits(w_ptr, scale_ptr, row_off, k0 + cols, K, bad_ptr, HAS_SCALE)
        top = tl.maximum(top, tl.max(bits, axis=0))
        lo = tl.minimum(lo, tl.min(tl.where(k0 + cols < K, bits, FLT_MAX_BITS), axis=0))
    c_lo = K
    hi = top + 1
    c_hi = 0
    bisect = tl.full((), 0, tl.int1)
    while (hi - lo > 1) & (c_lo != KEEP) & (c_hi != KEEP):
        probe = next_probe(lo, hi, c_lo, c_hi, KEEP, bisect)
        width = hi - lo
        c = 0
        for k0 in range(0, K, BLOCK_K):
            bits = row_bits(w_ptr, scale_ptr, row_off, k0 + cols, K, bad_ptr, HAS_SCALE)
            c += tl.sum((bits >= probe).to(tl.int32), axis=0)
        if c >= KEEP:
            lo = probe
            c_lo = c
        else:
            hi = probe
            c_hi = c
        bisect = (hi - lo) > (width + 1) // 2  # bisection leaves at most ceil(width / 2)
    need = KEEP - c_hi
    before = 0  # band members in earlier chunks
    for k0 in range(0, K, BLOCK_K):
        bits = row_bits(w_ptr, scale_ptr, row_off, k0 + cols, K, bad_ptr, HAS_SCALE)
        band = ((bits >= lo) & (bits < hi)).to(tl.int32)
        rank = before + tl.cumsum(band, axis=0) - band
        keep = (bits >= hi) | ((band != 0) & (rank < need))
        tl.store(mask_ptr + row * K + k0 + cols, keep.to(tl.uint8), mask=k0 + cols < K)
        before += tl.sum(band, axis=0)
