// Shared by the two sparse tensor-core kernels (spmm24_mma_regs.cuh, spmm24_mma_pipe.cuh): the mma.sp
// instruction, conversions, and the end of every kernel (split-K reduction, bias, store of y).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace {

// mma.sp::ordered_metadata (PTX ISA 8.5, CUDA 12.5+): the same product for metadata whose two indices per group are
// increasing, which the canonical format guarantees. ptxas advises it over plain .sp (expected to be slower on later
// architectures); on the H100 both run at the same rate (bench/mma_peak.py: 9 cycles per m16n8k32 per sub-partition).
#if defined(__CUDACC_VER_MAJOR__) && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5))
#define SPARSE_LLM_MMA_SP "mma.sp::ordered_metadata"
#else
#define SPARSE_LLM_MMA_SP "mma.sp"
#endif

// d += A (16 x 32, 2:4 sparse, metadata e, selector 0) . B (32 x 8), fp32 accumulators; TYPE: bf16 or f16.
#define SPARSE_LLM_MMA_SP_BODY(TYPE)                                                                               \
  asm volatile(SPARSE_LLM_MMA_SP ".sync.aligned.m16n8k32.row.col.f32." TYPE "." TYPE                              \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"                    \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e))

template <typename T>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    SPARSE_LLM_MMA_SP_BODY("bf16");
  } else {
    SPARSE_LLM_MMA_SP_BODY("f16");
  }
}
#undef SPARSE_LLM_MMA_SP_BODY

// L2 prefetch size of the weight loads (PTX .level::prefetch_size; 0: none). A block streams each W row in pieces
// of 128 (pipelined kernel) or 256 bytes (register kernel) of values and 16 or 32 bytes of metadata per chunk; with
// a 256-byte L2 fetch one DRAM request brings the row's next pieces too, which the same block reads next.
#ifndef SPARSE_LLM_L2_PREFETCH
#define SPARSE_LLM_L2_PREFETCH 256
#endif
#if SPARSE_LLM_L2_PREFETCH == 256
#define SPARSE_LLM_L2_HINT ".L2::256B"
#elif SPARSE_LLM_L2_PREFETCH == 128
#define SPARSE_LLM_L2_HINT ".L2::128B"
#elif SPARSE_LLM_L2_PREFETCH == 0
#define SPARSE_LLM_L2_HINT ""
#else
#error "SPARSE_LLM_L2_PREFETCH must be 0, 128 or 256"
#endif

// torch builds extensions without the implicit half/bfloat16 conversions: explicit ones.
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// The end of every kernel: with split-K (grid.z > 1) each block writes its fp32 partial tile to the workspace and
// counts itself in on the tile's counter; the last block of a tile adds the partials in split order (the same
// result on every run) and resets the counter to 0 for the next call. Then bias and the store of y.
template <typename T, int R, int NT, int kThreads>
__device__ __forceinline__ void finish_tile(float (&acc)[R][NT][4], const T* __restrict__ bias, T* __restrict__ y,
                                            float* __restrict__ partial, int* __restrict__ counters, int row0,
                                            int tok0, int M, int N, int tid, int g, int t) {
  if (gridDim.z > 1) {
    // Partial tile in [split][tile][value][thread] order: coalesced, and read back by the same thread slots.
    constexpr int kValues = R * NT * 4;
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    const int64_t tiles = static_cast<int64_t>(gridDim.x) * gridDim.y;
    float* mine = partial + (blockIdx.z * tiles + tile) * kValues * kThreads + tid;
    float* flat = &acc[0][0][0];
#pragma unroll
    for (int v = 0; v < kValues; ++v) mine[v * kThreads] = flat[v];
    __threadfence();
    __syncthreads();
    __shared__ int is_last;
    if (tid == 0) is_last = atomicAdd(counters + tile, 1) == static_cast<int>(gridDim.z) - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
#pragma unroll
    for (int v = 0; v < kValues; ++v) flat[v] = 0.f;
    for (int z = 0; z < static_cast<int>(gridDim.z); ++z) {
      const float* theirs = partial + (z * tiles + tile) * kValues * kThreads + tid;
#pragma unroll
      for (int v = 0; v < kValues; ++v) flat[v] += __ldcg(theirs + v * kThreads);
    }
    if (tid == 0) counters[tile] = 0;
  }

  // Accumulator: c0, c1 -> row g, tokens 2t, 2t+1; c2, c3 -> row g + 8.
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + 16 * r + g + 8 * h;
      if (row >= N) continue;
      const float b_row = bias != nullptr ? to_float(bias[row]) : 0.f;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int tok = tok0 + 8 * j + 2 * t + q;
          if (tok < M) y[static_cast<int64_t>(tok) * N + row] = from_float<T>(acc[r][j][2 * h + q] + b_row);
        }
    }
}

}  // namespace
