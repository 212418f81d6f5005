// The register kernel (stages 1-2): W chunks of 256 columns live in registers, x is staged in shared memory.
//
// The product is yT = W . xT: W is the sparse operand A of mma.sp.m16n8k32 (16 rows of W x 32 columns of K),
// x the dense operand B (32 columns of K x 8 tokens), the accumulator 16 rows x 8 tokens in fp32.
// A block has 4 or 8 warps; each warp owns R tiles of 16 rows, and all of them share the block's 8 NT tokens. K is
// walked in chunks of 256 columns (64 groups = 64 words per row). A thread loads 64 contiguous bytes of each of
// its rows per chunk (words 16t..16t+15, t = lane % 4: a warp reads 256 contiguous bytes per row), so the
// reduction over K is permuted: in step s (0..7) of a chunk, the mma's group j of the row is our group 16j+2s
// (j < 4) or 16(j-4)+2s+1 (j >= 4). The metadata register is rebuilt in that order from the row's 256 bits of
// natural metadata. The block's x chunk is staged in shared memory in the same permuted order (4-byte cp.async,
// coalesced on the global side, at most 2-way bank conflicts on the shared side, no registers), so a thread's B
// fragment of a step is one conflict-free 16-byte shared load. x is double-buffered: the next chunk is copied
// while the current one is multiplied, and one barrier per chunk orders the two.
#pragma once

#include "spmm24_mma_common.cuh"

namespace {

constexpr int kChunk = 256;    // K columns per main-loop step
constexpr int kStepStride = 20;  // 32-bit words per step in a staged token row (16 used; 20: 2-way stores, not 4)
constexpr int kXStride = 176;    // words per staged token row: >= 8 steps, = 16 mod 32 (conflict-free reads)

// One K chunk of W in registers: the thread's 64 contiguous bytes of values (words 16t .. 16t+15) and the row's
// 32 bytes of natural metadata, for each of its 2R rows. In step s the thread feeds the mma group t with its
// word 2s and the group t+4 with its word 2s+1: mma group j < 4 is our group 16j + 2s, j >= 4 our group
// 16(j-4) + 2s + 1.
template <int R>
struct WChunk {
  uint4 a[R][2][4];
  uint4 m[R][2][2];
};

// The 8 nibbles of step s in the mma's group order from a row's 64 natural nibbles (8 words): byte s of the
// row's 64-bit word j holds our groups 16j+2s (low nibble) and 16j+2s+1 (high nibble).
__device__ __forceinline__ uint32_t step_nibbles(const uint32_t (&w)[8], int s) {
  uint32_t bytes = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) bytes |= ((w[2 * j + (s >> 2)] >> (8 * (s & 3))) & 0xFFu) << (8 * j);
  uint32_t even = bytes & 0x0F0F0F0Fu;
  uint32_t odd = (bytes >> 4) & 0x0F0F0F0Fu;
  even = (even | (even >> 4)) & 0x00FF00FFu;
  even = (even | (even >> 8)) & 0x0000FFFFu;
  odd = (odd | (odd >> 4)) & 0x00FF00FFu;
  odd = (odd | (odd >> 8)) & 0x0000FFFFu;
  return even | (odd << 16);
}

template <int R>
__device__ __forceinline__ void load_w(WChunk<R>& f, const uint4* (&vrow)[R][2], const uint4* (&mrow)[R][2], int c) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int q = 0; q < 4; ++q) f.a[r][h][q] = __ldg(vrow[r][h] + c * 16 + q);
      f.m[r][h][0] = __ldg(mrow[r][h] + 2 * c);
      f.m[r][h][1] = __ldg(mrow[r][h] + 2 * c + 1);
    }
}

// Shared layout of a staged chunk, per token row: word (s, t, i) at kStepStride s + 4t + i is the i-th B
// register of thread t in step s. Natural word w of the chunk (columns 2w, 2w+1) is in our group G = w / 2, i.e.
// G = 16a + 2s + e (a < 4, e < 2), and goes to thread t = 2(a % 2) + w % 2 as register i = a / 2 + 2e.
__device__ __forceinline__ int staged_offset(int w) {
  const int G = w >> 1, a = G >> 4, s = (G >> 1) & 7, e = G & 1;
  return kStepStride * s + 4 * (2 * (a & 1) + (w & 1)) + (a >> 1) + 2 * e;
}

// Copies the block's x chunk c (8 NT tokens x 128 words) into shared memory, asynchronously: thread i copies
// word i % 128 of token rows i / 128 + u THREADS / 128. Rows past M are filled with zeros (never stored).
template <typename T, int NT, int THREADS>
__device__ __forceinline__ void stage_x(uint32_t* xs, const T* __restrict__ x, int tok0, int M, int64_t stride_xm,
                                        int c, int tid) {
  constexpr int kRowsPerPass = THREADS / 128;
  const int w = tid & 127;
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(xs + staged_offset(w))) +
                       4u * kXStride * static_cast<uint32_t>(tid >> 7);
  const int tk0 = tok0 + (tid >> 7);
  const T* src = x + (tk0 < M ? tk0 : 0) * stride_xm + c * kChunk + 2 * w;
#pragma unroll
  for (int u = 0; u < 8 * NT / kRowsPerPass; ++u) {
    const bool valid = tk0 + u * kRowsPerPass < M;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst + 4u * kXStride * kRowsPerPass * u),
                 "l"(valid ? src + u * kRowsPerPass * stride_xm : src), "r"(valid ? 4 : 0));
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

__device__ __forceinline__ void wait_staged() { asm volatile("cp.async.wait_group 0;\n" ::); }

template <typename T, int R, int NT>
__device__ __forceinline__ void mma_chunk(float (&acc)[R][NT][4], const WChunk<R>& f, const uint32_t* xs, int g,
                                          int t) {
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    uint32_t e[R], a[R][4];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint32_t(&mg)[8] = *reinterpret_cast<const uint32_t(*)[8]>(&f.m[r][0][0]);
      const uint32_t(&m8)[8] = *reinterpret_cast<const uint32_t(*)[8]>(&f.m[r][1][0]);
      const uint32_t(&wg)[16] = *reinterpret_cast<const uint32_t(*)[16]>(&f.a[r][0][0]);
      const uint32_t(&w8)[16] = *reinterpret_cast<const uint32_t(*)[16]>(&f.a[r][1][0]);
      const uint32_t ng = step_nibbles(mg, s), n8 = step_nibbles(m8, s);
      // Metadata register (sparsity selector 0, found on the H100 against F.linear): thread 0 of a quad holds
      // mma groups 0-3 of rows g (low 16 bits) and g + 8 (high 16 bits), thread 1 groups 4-7.
      e[r] = (t & 1) ? ((ng >> 16) | (n8 & 0xFFFF0000u)) : ((ng & 0xFFFFu) | (n8 << 16));
      a[r][0] = wg[2 * s];
      a[r][1] = w8[2 * s];
      a[r][2] = wg[2 * s + 1];
      a[r][3] = w8[2 * s + 1];
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4 bv = *reinterpret_cast<const uint4*>(xs + (8 * j + g) * kXStride + kStepStride * s + 4 * t);
      const uint32_t b[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int r = 0; r < R; ++r) mma_sp<T>(acc[r][j], a[r], b, e[r]);
    }
  }
}

// STAGES chunks of W live in registers: while chunk c is multiplied, chunks c+1 .. c+STAGES-1 are in flight.
template <typename T, int R, int NT, int STAGES, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) spmm24_mma_kernel(
    const T* __restrict__ x, const T* __restrict__ values, const int16_t* __restrict__ meta,
    const T* __restrict__ bias, T* __restrict__ y, float* __restrict__ partial, int* __restrict__ counters, int M,
    int N, int K, int64_t stride_xm, int64_t stride_vn, int64_t stride_mn, int chunks_per_split) {
  extern __shared__ uint4 smem[];
  uint32_t* xs = reinterpret_cast<uint32_t*>(smem);
  constexpr int kBuf = 8 * NT * kXStride;  // words per staged chunk
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;  // groupID
  const int t = lane & 3;   // thread in group
  constexpr int kThreads = WARPS * 32;
  const int row0 = (blockIdx.y * WARPS + warp) * (16 * R);
  const int tok0 = blockIdx.x * (8 * NT);
  const int num_chunks = K / kChunk;
  const int c_begin = blockIdx.z * chunks_per_split;
  const int c_end = min(c_begin + chunks_per_split, num_chunks);

  // Rows this thread loads: row0 + 16r + g and + 8; rows past N are clamped (their results are not stored).
  const uint4* vrow[R][2];
  const uint4* mrow[R][2];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = min(row0 + 16 * r + g + 8 * h, N - 1);
      vrow[r][h] = reinterpret_cast<const uint4*>(values + row * stride_vn) + 4 * t;  // words 16t.. of chunk 0
      mrow[r][h] = reinterpret_cast<const uint4*>(meta + row * stride_mn);            // 16 int16 = 32 B per chunk
    }

  float acc[R][NT][4] = {};

  WChunk<R> f[STAGES];
#pragma unroll
  for (int u = 0; u < STAGES - 1; ++u)
    if (c_begin + u < c_end) load_w(f[u], vrow, mrow, c_begin + u);
  if (c_begin < c_end) stage_x<T, NT, kThreads>(xs, x, tok0, M, stride_xm, c_begin, tid);
  for (int c = c_begin; c < c_end; c += STAGES) {
#pragma unroll
    for (int u = 0; u < STAGES; ++u) {  // unrolled: every ring index is a compile-time constant
      const int cc = c + u;
      if (cc + STAGES - 1 < c_end) load_w(f[(u + STAGES - 1) % STAGES], vrow, mrow, cc + STAGES - 1);
      if (cc < c_end) {  // block-uniform: the barrier is reached by every thread or none
        wait_staged();    // this thread's copies of chunk cc have landed
        __syncthreads();  // everyone's have, and everyone is done with chunk cc - 1 (the buffer copied next)
        if (cc + 1 < c_end) {
          stage_x<T, NT, kThreads>(xs + ((cc + 1 - c_begin) & 1) * kBuf, x, tok0, M, stride_xm, cc + 1, tid);
        }
        mma_chunk<T, R, NT>(acc, f[u], xs + ((cc - c_begin) & 1) * kBuf, g, t);
      }
    }
  }

  finish_tile<T, R, NT, kThreads>(acc, bias, y, partial, counters, reinterpret_cast<float*>(smem), row0, tok0, M, N,
                                  tid, g, t);
}

}  // namespace
