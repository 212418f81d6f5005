"""Small-M 2:4 sparse x dense products: ``y = x @ W.T (+ bias)`` with W in the canonical packed form.

W (N, K) is read as ``values`` (N, K/2) and natural-order ``meta`` (N, K/16) int16 (sparse_llm/format.py);
x is (M, K), y is (M, N). The weight stream is the cost (decode is memory-bound: 1.125 bytes per weight
against 2 for dense bf16), so both kernels read each byte of W once per M block and keep the decode work
in registers. Tiles are indexed by ``q``, the int16 metadata word (16 columns of W = 4 groups of 4 = 8 values),
so one metadata load serves 8 values and no gather is needed.

- ``spmm24_select_kernel`` (M of 1 to a few): no tensor cores; for each kept value pick the x of its column
  with ``where`` and multiply-accumulate in fp32 (DESIGN.md prototype (b): 1.58-1.66x of cuBLAS at M = 1).
- ``spmm24_dot_kernel`` (M up to a few hundred): expand the W tile to dense in registers and put it on the
  tensor cores as the LEFT operand (``acc[N, M] = W_tile @ x_tile.T``), so the expanded tile can stay in
  registers and only the small x tile goes through shared memory.

- ``spmm24_gemv_kernel`` (M of 1 to a few): the select idea with every tensor 2-D in one layout (gathered
  values/metadata per group): no reshape/split layout conversions in the loop; one row of x per program.
- ``spmm24_fma_kernel`` (M = 1): as gemv, but the two kept values of a group are one int32 word (one coalesced
  16-byte load per 4 groups) and the main loop runs unmasked (vector loads); 1.29x of cuBLAS at M = 1 on the H100
  (bench/NOTES.md). A variant that put K-permuted tiles on the tensor cores ("dot4") ran at 0.65x and was removed.

All support split-K: with ``SPLIT_K > 1`` each program writes fp32 partial sums to its slice of a
(SPLIT_K, M, N) buffer and the launcher sums them (deterministic, unlike atomics) and adds the bias, which keeps
all SMs busy when N is small.
"""

import triton
import triton.language as tl


@triton.jit
def _split_range(pid_k, num, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """[begin, end) of the ``pid_k``-th of SPLIT_K pieces of ``num`` steps; piece starts are multiples of BLOCK."""
    per_split = tl.cdiv(tl.cdiv(num, SPLIT_K), BLOCK) * BLOCK
    begin = pid_k * per_split
    return begin, tl.minimum(begin + per_split, num)


@triton.jit
def _decode_group_indices(meta_ptr, offs_n, offs_q, stride_mn, mask):
    """(BLOCK_N, BLOCK_Q, 4) low and high kept column indices (0..3) of every group of 4 in the tile."""
    word = tl.load(meta_ptr + offs_n[:, None] * stride_mn + offs_q[None, :], mask=mask, other=0)
    word = word.to(tl.int32) & 0xFFFF  # [BLOCK_N, BLOCK_Q]
    shifts = tl.arange(0, 4) * 4
    nibble = (word[:, :, None] >> shifts[None, None, :]) & 0xF  # [BLOCK_N, BLOCK_Q, 4]
    return nibble & 3, nibble >> 2


@triton.jit
def _load_values(vals_ptr, offs_n, offs_q, stride_vn, mask, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(BLOCK_N, BLOCK_Q, 4) first and second kept values of every group of 4 in the tile."""
    offs_v = offs_q[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
    v = tl.load(vals_ptr + offs_n[:, None, None] * stride_vn + offs_v, mask=mask[:, :, None], other=0.0)
    return tl.split(tl.reshape(v, (BLOCK_N, BLOCK_Q, 4, 2)))


@triton.jit
def spmm24_select_kernel(
    x_ptr,  # [M, K] fp16/bf16, unit column stride
    vals_ptr,  # [N, K/2], unit column stride
    meta_ptr,  # [N, K/16] int16, unit column stride
    bias_ptr,  # [N] or a dummy when HAS_BIAS is False
    y_ptr,  # [M, N] x.dtype (SPLIT_K == 1) or [SPLIT_K, M, N] fp32 partial sums, unit column stride
    M,
    N,
    K,
    stride_xm,
    stride_vn,
    stride_mn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    # Program id 0 runs over M blocks so the programs that share a weight tile run side by side (L2 reuse).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q_begin, q_end = _split_range(pid_k, K // 16, SPLIT_K, BLOCK_Q)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_Q, 4), dtype=tl.float32)
    for q0 in range(q_begin, q_end, BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        mask_q = offs_q < q_end
        mask_w = mask_n[:, None] & mask_q[None, :]
        low, high = _decode_group_indices(meta_ptr, offs_n, offs_q, stride_mn, mask_w)
        v_low, v_high = _load_values(vals_ptr, offs_n, offs_q, stride_vn, mask_w, BLOCK_N, BLOCK_Q)
        # x of the tile as (BLOCK_M, BLOCK_Q, 4 groups, 4 positions), split into one tensor per position.
        offs_k = offs_q[:, None] * 16 + tl.arange(0, 16)[None, :]
        x = tl.load(
            x_ptr + offs_m[:, None, None] * stride_xm + offs_k[None, :, :],
            mask=mask_m[:, None, None] & mask_q[None, :, None],
            other=0.0,
        )
        x02, x13 = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_Q, 4, 2, 2)))
        x0, x2 = tl.split(x02)
        x1, x3 = tl.split(x13)
        x0 = x0.to(tl.float32)[:, None, :, :]
        x1 = x1.to(tl.float32)[:, None, :, :]
        x2 = x2.to(tl.float32)[:, None, :, :]
        x3 = x3.to(tl.float32)[:, None, :, :]
        # The low index is one of 0..2 and the high one of 1..3: two selects per kept value.
        lo = low[None, :, :, :]
        hi = high[None, :, :, :]
        x_low = tl.where(lo == 0, x0, tl.where(lo == 1, x1, x2))
        x_high = tl.where(hi == 3, x3, tl.where(hi == 2, x2, x1))
        acc += v_low.to(tl.float32)[None, :, :, :] * x_low
        acc += v_high.to(tl.float32)[None, :, :, :] * x_high
    out = tl.sum(tl.sum(acc, axis=3), axis=2)  # [BLOCK_M, BLOCK_N]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask_y = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask_y)
    else:
        tl.store(y_ptrs + pid_k * M * stride_ym, out, mask=mask_y)


@triton.jit
def spmm24_dot_kernel(
    x_ptr,  # [M, K] fp16/bf16, unit column stride
    vals_ptr,  # [N, K/2], unit column stride
    meta_ptr,  # [N, K/16] int16, unit column stride
    bias_ptr,  # [N] or a dummy when HAS_BIAS is False
    y_ptr,  # [M, N] x.dtype (SPLIT_K == 1) or [SPLIT_K, M, N] fp32 partial sums, unit column stride
    M,
    N,
    K,
    stride_xm,
    stride_vn,
    stride_mn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q_begin, q_end = _split_range(pid_k, K // 16, SPLIT_K, BLOCK_Q)
    mask_m = offs_m < M
    mask_n = offs_n < N
    positions = tl.arange(0, 4)[None, None, None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for q0 in range(q_begin, q_end, BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        mask_q = offs_q < q_end
        mask_w = mask_n[:, None] & mask_q[None, :]
        low, high = _decode_group_indices(meta_ptr, offs_n, offs_q, stride_mn, mask_w)
        v_low, v_high = _load_values(vals_ptr, offs_n, offs_q, stride_vn, mask_w, BLOCK_N, BLOCK_Q)
        # Stay in the weight dtype (a 0.0 literal would promote the tile to fp32).
        zero = tl.zeros((BLOCK_N, BLOCK_Q, 4, 4), dtype=v_low.dtype)
        w = tl.where(
            low[:, :, :, None] == positions,
            v_low[:, :, :, None],
            tl.where(high[:, :, :, None] == positions, v_high[:, :, :, None], zero),
        )
        w = tl.reshape(w, (BLOCK_N, BLOCK_Q * 16))  # dense W tile [BLOCK_N, BLOCK_K]
        offs_k = q0 * 16 + tl.arange(0, BLOCK_Q * 16)
        mask_k = offs_k < q_end * 16
        x_t = tl.load(
            x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
            mask=mask_k[:, None] & mask_m[None, :],
            other=0.0,
        )  # [BLOCK_K, BLOCK_M]
        acc = tl.dot(w, x_t, acc)
    y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
    mask_y = mask_n[:, None] & mask_m[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_y)
    else:
        tl.store(y_ptrs + pid_k * M * stride_ym, acc, mask=mask_y)


@triton.jit
def spmm24_gemv_kernel(
    x_ptr,  # [M, K] fp16/bf16, unit column stride
    vals_ptr,  # [N, K/2], unit column stride
    meta_ptr,  # [N, K/16] int16, unit column stride
    bias_ptr,  # [N] or a dummy when HAS_BIAS is False
    y_ptr,  # [M, N] x.dtype (SPLIT_K == 1) or [SPLIT_K, M, N] fp32 partial sums
    M,
    N,
    K,
    stride_xm,
    stride_vn,
    stride_mn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """One row of x per program; every tensor is 2-D (BLOCK_N, BLOCK_G groups) in one layout, so the decode
    needs no reshape, split or layout conversion: values and metadata are gathered per group (the repeated
    addresses hit L1), x per position of the group."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    g_begin, g_end = _split_range(pid_k, K // 4, SPLIT_K, BLOCK_G)
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    x_row = x_ptr + pid_m * stride_xm
    for g0 in range(g_begin, g_end, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        mask_g = offs_g < g_end
        mask_w = mask_n[:, None] & mask_g[None, :]
        v_ptrs = vals_ptr + offs_n[:, None] * stride_vn + 2 * offs_g[None, :]
        v_low = tl.load(v_ptrs, mask=mask_w, other=0.0).to(tl.float32)
        v_high = tl.load(v_ptrs + 1, mask=mask_w, other=0.0).to(tl.float32)
        word = tl.load(meta_ptr + offs_n[:, None] * stride_mn + (offs_g // 4)[None, :], mask=mask_w, other=0)
        nibble = (word.to(tl.int32) >> ((offs_g % 4) * 4)[None, :]) & 0xF
        low = nibble & 3
        high = nibble >> 2
        x0 = tl.load(x_row + 4 * offs_g, mask=mask_g, other=0.0).to(tl.float32)[None, :]
        x1 = tl.load(x_row + 4 * offs_g + 1, mask=mask_g, other=0.0).to(tl.float32)[None, :]
        x2 = tl.load(x_row + 4 * offs_g + 2, mask=mask_g, other=0.0).to(tl.float32)[None, :]
        x3 = tl.load(x_row + 4 * offs_g + 3, mask=mask_g, other=0.0).to(tl.float32)[None, :]
        # low is one of 0..2, high one of 1..3: two selects per kept value
        x_low = tl.where(low == 0, x0, tl.where(low == 1, x1, x2))
        x_high = tl.where(high == 3, x3, tl.where(high == 2, x2, x1))
        acc += v_low * x_low + v_high * x_high
    out = tl.sum(acc, axis=1)  # [BLOCK_N]
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + pid_m * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.store(y_ptr + (pid_k * M + pid_m) * stride_ym + offs_n, out, mask=mask_n)


# ---------------------------------------------------------------------------------------------------------------
# Pair kernels: the two kept values of a group of 4 are one int32 word of ``values`` (little-endian: the first kept
# value in the low half), so a (BLOCK_N, BLOCK_G) tile of groups is ONE coalesced load with no reshape or split.
# The metadata nibble of group g is gathered from int16 word g // 4 (4 neighbouring groups share it: L1 hits).
# Every tensor of the loop is 2-D (or a broadcast of 2-D) in one layout.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_pairs(vals_ptr, meta_ptr, offs_n, offs_g, stride_vw, stride_mn, mask, DTYPE: tl.constexpr):
    """(BLOCK_N, BLOCK_G) first/second kept value (DTYPE) and their column indices (low in 0..2, high in 1..3)."""
    words = vals_ptr.to(tl.pointer_type(tl.int32))
    pair = tl.load(words + offs_n[:, None] * stride_vw + offs_g[None, :], mask=mask, other=0)
    v_low = pair.to(tl.int16).to(DTYPE, bitcast=True)
    v_high = (pair >> 16).to(tl.int16).to(DTYPE, bitcast=True)
    word = tl.load(meta_ptr + offs_n[:, None] * stride_mn + (offs_g // 4)[None, :], mask=mask, other=0)
    nibble = (word.to(tl.int32) >> ((offs_g % 4) * 4)[None, :]) & 0xF
    return v_low, v_high, nibble & 3, nibble >> 2


@triton.jit
def _load_or_zero(ptrs, mask, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptrs, mask=mask, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _fma_step(
    acc, x_row, vals_ptr, meta_ptr, offs_n, offs_g, g_end, stride_vw, stride_mn, mask_n, MASKED: tl.constexpr
):
    """acc[BLOCK_N, BLOCK_G] += kept values * the x of their columns (one row of x). Unmasked steps (whole tiles)
    let the compiler use vector loads."""
    if MASKED:
        mask_g = offs_g < g_end
        mask_w = mask_n[:, None] & mask_g[None, :]
    else:
        mask_g = None
        mask_w = mask_n[:, None]
    v_low, v_high, low, high = _load_pairs(
        vals_ptr, meta_ptr, offs_n, offs_g, stride_vw, stride_mn, mask_w, x_row.dtype.element_ty
    )
    x0 = _load_or_zero(x_row + 4 * offs_g, mask_g, MASKED).to(tl.float32)[None, :]
    x1 = _load_or_zero(x_row + 4 * offs_g + 1, mask_g, MASKED).to(tl.float32)[None, :]
    x2 = _load_or_zero(x_row + 4 * offs_g + 2, mask_g, MASKED).to(tl.float32)[None, :]
    x3 = _load_or_zero(x_row + 4 * offs_g + 3, mask_g, MASKED).to(tl.float32)[None, :]
    x_low = tl.where(low == 0, x0, tl.where(low == 1, x1, x2))
    x_high = tl.where(high == 3, x3, tl.where(high == 2, x2, x1))
    return acc + v_low.to(tl.float32) * x_low + v_high.to(tl.float32) * x_high


@triton.jit
def spmm24_fma_kernel(
    x_ptr,  # [M, K] fp16/bf16, unit column stride
    vals_ptr,  # [N, K/2], unit column stride, row stride even
    meta_ptr,  # [N, K/16] int16, unit column stride
    bias_ptr,  # [N] or a dummy when HAS_BIAS is False
    y_ptr,  # [M, N] x.dtype (SPLIT_K == 1) or [SPLIT_K, M, N] fp32 partial sums, unit column stride
    M,
    N,
    K,
    stride_xm,
    stride_vw,  # row stride of values in int32 words (= row stride in elements / 2)
    stride_mn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,  # always 1: one row of x per program (kept for the common launcher signature)
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """CUDA cores, M of 1 to a few: each kept value picks the x of its column (two selects) and is multiplied in
    fp32; the products of a row are summed once at the end. Every tensor is (BLOCK_N, BLOCK_G) in one layout."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    g_begin, g_end = _split_range(pid_k, K // 4, SPLIT_K, BLOCK_G)
    g_full = g_begin + tl.maximum(g_end - g_begin, 0) // BLOCK_G * BLOCK_G
    x_row = x_ptr + pid_m * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for g0 in range(g_begin, g_full, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        acc = _fma_step(acc, x_row, vals_ptr, meta_ptr, offs_n, offs_g, g_end, stride_vw, stride_mn, mask_n, False)
    if g_full < g_end:
        offs_g = g_full + tl.arange(0, BLOCK_G)
        acc = _fma_step(acc, x_row, vals_ptr, meta_ptr, offs_n, offs_g, g_end, stride_vw, stride_mn, mask_n, True)
    out = tl.sum(acc, axis=1)  # [BLOCK_N]
    y_ptrs = y_ptr + pid_m * stride_ym + offs_n
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.store(y_ptrs + pid_k * M * stride_ym, out, mask=mask_n)
