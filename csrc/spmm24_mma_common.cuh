// Shared by the sparse tensor-core kernels (spmm24_mma_regs.cuh, spmm24_mma_pipe.cuh; conversions and the global
// split-K reduction also by spmm24_wgmma.cu): the mma.sp instruction, conversions, and the end of every kernel
// (split-K reduction, bias, store of y).
#pragma once

#include <cooperative_groups.h>
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

// torch builds extensions without the implicit half/bfloat16 conversions: explicit ones.
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Split-K through distributed shared memory (sm_90 thread-block clusters): when the split pieces of a tile run as
// one cluster (asked for by the caller, MmaConfig.cluster; the launcher takes it for split <= 8 on compute
// capability 9.x when all clusters are resident at once), each block leaves its fp32 partial tile in its own shared
// memory; then block z adds slice z of the tile's values from all peers' shared memory and stores that slice of y.
// No global round trip (partial write, fence, counter atomic, partial read) on the critical path, and the reads are
// spread over the cluster's SMs. The sums and their order are those of the global path, so both give the same bits.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SPARSE_LLM_CLUSTER_SPLIT 1
__device__ __forceinline__ uint32_t cluster_blocks() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
}
#endif

constexpr int kMaxClusterSplit = 8;  // the portable cluster size

// A barrier of the kThreads threads taking part: the whole block (BARRIER 0), else named barrier BARRIER.
template <int BARRIER, int kThreads>
__device__ __forceinline__ void sync_threads() {
  if constexpr (BARRIER == 0) {
    __syncthreads();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"n"(BARRIER), "n"(kThreads) : "memory");
  }
}

// out[0..3] += p, component by component.
__device__ __forceinline__ void add4(float* out, float4 p) {
  out[0] += p.x;
  out[1] += p.y;
  out[2] += p.z;
  out[3] += p.w;
}

// The global split-K reduction of a tile (grid.z > 1; grid.x * grid.y tiles): each block writes its fp32 partial
// tile (kValues values per thread slot tid of kThreads) to `partial` and counts itself in on the tile's counter; the
// last block of a tile gets the partials added in split order in `flat` (the same result on every run), resets the
// counter to 0 for the next call and returns true; the others return false.
// Partial tile in [split][tile][value / 4][thread][4] order: 16-byte stores and loads, coalesced, read back by the same
// thread slots. The last block loads the partials of kGroup pieces at once (kGroup x kValues registers more, at most
// 128; kGroupMax = 1 for callers without those registers to spare) before it adds them: one round trip to L2 per
// group of pieces. (The reduction costs the H200 3.5-10 us of a 14-30 us call; this and the single fence below took
// only 0.3-2 us of it: bench/NOTES.md, seventeenth round.)
template <int kValues, int kThreads, int BARRIER, int kGroupMax = 1>
__device__ __forceinline__ bool split_sum_global(float* flat, float* __restrict__ partial, int* __restrict__ counters,
                                                 int tid) {
  static_assert(kValues % 4 == 0, "the partial tile is stored in 16-byte pieces");
  constexpr int kVec = kValues / 4;
  constexpr int kFit = kValues <= 32 ? 4 : (kValues <= 64 ? 2 : 1);
  constexpr int kGroup = kFit < kGroupMax ? kFit : kGroupMax;
  const int tile = blockIdx.y * gridDim.x + blockIdx.x;
  const int64_t tiles = static_cast<int64_t>(gridDim.x) * gridDim.y;
  const int split = static_cast<int>(gridDim.z);
  auto piece = [&](int z) {
    return reinterpret_cast<float4*>(partial + (z * tiles + tile) * kValues * kThreads) + tid;
  };
  float4* mine = piece(blockIdx.z);
#pragma unroll
  for (int v = 0; v < kVec; ++v)
    __stcg(mine + v * kThreads, make_float4(flat[4 * v], flat[4 * v + 1], flat[4 * v + 2], flat[4 * v + 3]));
  // One thread fences for the block, between two barriers (the pattern of a cooperative grid sync): the barrier
  // orders every thread's stores before thread 0's fence and counter atomic, and thread 0's second fence before
  // every thread's loads (before, each of the 128-512 threads fenced: bench/NOTES.md, seventeenth round).
  sync_threads<BARRIER, kThreads>();
  __shared__ int is_last;
  if (tid == 0) {
    __threadfence();
    is_last = atomicAdd(counters + tile, 1) == split - 1;
    if (is_last) __threadfence();
  }
  sync_threads<BARRIER, kThreads>();
  if (!is_last) return false;
#pragma unroll
  for (int v = 0; v < kValues; ++v) flat[v] = 0.f;
  if constexpr (kGroup == 1) {  // each load added as it arrives: no registers beyond one 16-byte piece
    for (int z = 0; z < split; ++z) {
      const float4* theirs = piece(z);
#pragma unroll
      for (int v = 0; v < kVec; ++v) add4(flat + 4 * v, __ldcg(theirs + v * kThreads));
    }
  } else {  // kGroup pieces' loads in flight at once, then added in split order
    for (int z0 = 0; z0 < split; z0 += kGroup) {
      float4 in[kGroup][kVec];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (z0 + j < split) {
          const float4* theirs = piece(z0 + j);
#pragma unroll
          for (int v = 0; v < kVec; ++v) in[j][v] = __ldcg(theirs + v * kThreads);
        }
      }
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (z0 + j < split) {
#pragma unroll
          for (int v = 0; v < kVec; ++v) add4(flat + 4 * v, in[j][v]);
        }
      }
    }
  }
  if (tid == 0) counters[tile] = 0;
  return true;
}

// The end of every kernel: with split-K (grid.z > 1) the partial tiles of a tile's pieces are added, through
// distributed shared memory when the pieces form one cluster, else through the global workspace: each block writes
// its fp32 partial tile and counts itself in on the tile's counter; the last block of a tile adds the partials in
// split order (the same result on every run) and resets the counter to 0 for the next call. Then bias and the store
// of y. `smem` is the kernel's dynamic shared memory (at least R * NT * 4 floats per thread), free once the main
// loop is done.
template <typename T, int R, int NT, int kThreads>
__device__ __forceinline__ void finish_tile(float (&acc)[R][NT][4], const T* __restrict__ bias, T* __restrict__ y,
                                            float* __restrict__ partial, int* __restrict__ counters, float* smem,
                                            int row0, int tok0, int M, int N, int tid, int g, int t) {
  constexpr int kValues = R * NT * 4;
  float* flat = &acc[0][0][0];
  int v_begin = 0, v_end = kValues;  // the values of acc this block stores
#ifdef SPARSE_LLM_CLUSTER_SPLIT
  if (gridDim.z > 1 && cluster_blocks() == gridDim.z) {
    // [value][thread] order: conflict-free, and read back by the same thread slot of every peer.
    __syncthreads();  // every warp is done with the shared memory of the main loop
#pragma unroll
    for (int v = 0; v < kValues; ++v) smem[v * kThreads + tid] = flat[v];
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    cluster.sync();  // all partials are written (release/acquire across the cluster)
    const int split = static_cast<int>(gridDim.z);
    const int per = (kValues + split - 1) / split;
    v_begin = min(static_cast<int>(cluster.block_rank()) * per, kValues);
    v_end = min(v_begin + per, kValues);
    const float* peer[kMaxClusterSplit];
#pragma unroll
    for (int z = 0; z < kMaxClusterSplit; ++z) peer[z] = cluster.map_shared_rank(smem, z < split ? z : 0) + tid;
#pragma unroll
    for (int v = 0; v < kValues; ++v) {
      if (v < v_begin || v >= v_end) continue;
      float sum = 0.f;
#pragma unroll
      for (int z = 0; z < kMaxClusterSplit; ++z)
        if (z < split) sum += peer[z][v * kThreads];
      flat[v] = sum;
    }
    cluster.sync();  // every peer's shared memory stays alive until all slices are read
  } else
#endif
  if (gridDim.z > 1 && !split_sum_global<kValues, kThreads, 0>(flat, partial, counters, tid)) return;

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
          const int v = (r * NT + j) * 4 + 2 * h + q;  // index of acc[r][j][2h + q] in `flat`
          const int tok = tok0 + 8 * j + 2 * t + q;
          if (tok < M && v >= v_begin && v < v_end) {
            y[static_cast<int64_t>(tok) * N + row] = from_float<T>(acc[r][j][2 * h + q] + b_row);
          }
        }
    }
}

}  // namespace
