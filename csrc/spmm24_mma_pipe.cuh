#pragma once

#include "spmm24_mma_common.cuh"

namespace {

// ---- Pipelined version: W and x both go through shared memory, several chunks in flight --------------------------
//
// The register version above holds its W chunk in registers, so more chunks in flight cost occupancy; from 32 tokens
// on it runs one block per SM. Here a block copies its W rows and its x tokens of chunk c + S - 1 with 16-byte
// cp.async while chunk c is multiplied (S stages of 128 columns each), and the fragments come from shared memory
// through ldmatrix, already in the register order the mma wants: K is in natural order, so the metadata register of
// a step is one byte permute of two natural metadata words and x needs no permuted staging.
//
// A staged W row is 144 bytes: its 128 bytes of values (32 groups, one 32-bit word each) then its 16 bytes of
// metadata (one 32-bit word per 32-column step). A staged token row of x is 272 bytes (128 columns + 16 bytes of
// padding). Both strides are odd multiples of 16 bytes, so the 8 rows of every ldmatrix phase hit 8 distinct bank
// groups. Step s (32 columns) of a row: values bytes 32s .. 32s + 31, metadata word s, x columns 32s .. 32s + 31.
constexpr int kPipeChunk = 128;
constexpr int kPipeRowBytes = 144;  // W: 128 bytes of values + 16 of metadata
constexpr int kPipeXBytes = 272;    // x: 256 bytes of a token's chunk + 16 of padding

template <int R, int NT, int WARPS>
struct PipeLayout {
  static constexpr int kThreads = WARPS * 32;
  static constexpr int kRows = WARPS * 16 * R;                 // rows of W per block
  static constexpr int kWBytes = kRows * kPipeRowBytes;       // one stage of W
  static constexpr int kStageBytes = kWBytes + 8 * NT * kPipeXBytes;
  static constexpr int kVUnits = kRows * 8;                   // 16-byte copies of values per chunk
  static constexpr int kXUnits = 8 * NT * 16;                 // 16-byte copies of x per chunk
};

// Per-thread byte offsets of the copies of chunk 0 from the start of x, values and meta (chunk c adds c * 128
// columns to the three base pointers): computed once per block. 32-bit offsets, half the registers of pointers (the
// launcher checks that the tensors fit); one bit per x copy says whether its token row exists (else zero-filled).
template <typename T, int R, int NT, int WARPS>
struct PipeSources {
  using L = PipeLayout<R, NT, WARPS>;
  static constexpr int kVPasses = (L::kVUnits + L::kThreads - 1) / L::kThreads;
  static constexpr int kMPasses = (L::kRows + L::kThreads - 1) / L::kThreads;
  static constexpr int kXPasses = (L::kXUnits + L::kThreads - 1) / L::kThreads;
  static_assert(kXPasses <= 32, "one bit per x copy");
  uint32_t v[kVPasses];
  uint32_t m[kMPasses];
  uint32_t x[kXPasses];
  uint32_t x_real;  // bit p: copy p reads a token row < M

  __device__ __forceinline__ PipeSources(int brow0, int tok0, int M, int N, int64_t stride_xm, int64_t stride_vn,
                                         int64_t stride_mn, int tid) {
#pragma unroll
    for (int p = 0; p < kVPasses; ++p) {  // unit u: row u / 8, 16-byte piece u % 8 of the row's 128 bytes
      const int u = min(tid + p * L::kThreads, L::kVUnits - 1);
      const int row = min(brow0 + u / 8, N - 1);  // rows past N: any valid row (their results are not stored)
      v[p] = static_cast<uint32_t>(row * stride_vn * sizeof(T)) + 16 * (u % 8);
    }
#pragma unroll
    for (int p = 0; p < kMPasses; ++p) {
      const int row = min(brow0 + min(tid + p * L::kThreads, L::kRows - 1), N - 1);
      m[p] = static_cast<uint32_t>(row * stride_mn * sizeof(int16_t));
    }
    x_real = 0;
#pragma unroll
    for (int p = 0; p < kXPasses; ++p) {  // unit u: token row u / 16, piece u % 16 of its 256 bytes
      const int u = min(tid + p * L::kThreads, L::kXUnits - 1);
      const int tok = tok0 + u / 16;
      x[p] = static_cast<uint32_t>((tok < M ? tok : 0) * stride_xm * sizeof(T)) + 16 * (u % 16);
      x_real |= (tok < M ? 1u : 0u) << p;
    }
  }
};

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, uint32_t bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

// Issues the copies of chunk c into the stage at shared address `stage`.
template <typename T, int R, int NT, int WARPS>
__device__ __forceinline__ void pipe_copy(uint32_t stage, const PipeSources<T, R, NT, WARPS>& src,
                                          const T* __restrict__ xg, const T* __restrict__ values,
                                          const int16_t* __restrict__ meta, int c, int tid) {
  using L = PipeLayout<R, NT, WARPS>;
  using S = PipeSources<T, R, NT, WARPS>;
  const char* vc = reinterpret_cast<const char*>(values + c * (kPipeChunk / 2));
  const char* mc = reinterpret_cast<const char*>(meta + c * (kPipeChunk / 16));
  const char* xc = reinterpret_cast<const char*>(xg + c * kPipeChunk);
#pragma unroll
  for (int p = 0; p < S::kVPasses; ++p) {
    const int u = tid + p * L::kThreads;
    if (L::kVUnits % L::kThreads == 0 || u < L::kVUnits)
      cp_async16(stage + kPipeRowBytes * (u / 8) + 16 * (u % 8), vc + src.v[p]);
  }
#pragma unroll
  for (int p = 0; p < S::kMPasses; ++p) {
    const int r = tid + p * L::kThreads;
    if (L::kRows % L::kThreads == 0 || r < L::kRows) cp_async16(stage + kPipeRowBytes * r + 128, mc + src.m[p]);
  }
#pragma unroll
  for (int p = 0; p < S::kXPasses; ++p) {
    const int u = tid + p * L::kThreads;
    if (L::kXUnits % L::kThreads == 0 || u < L::kXUnits)
      cp_async16(stage + L::kWBytes + kPipeXBytes * (u / 16) + 16 * (u % 16), xc + src.x[p],
                 (src.x_real >> p) & 1u ? 16u : 0u);
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Word s of a 16-byte metadata load (s known at compile time after unrolling).
__device__ __forceinline__ uint32_t word(const uint4& v, int s) {
  return s == 0 ? v.x : s == 1 ? v.y : s == 2 ? v.z : v.w;
}

template <typename T, int R, int NT, int S, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) spmm24_mma_pipe_kernel(
    const T* __restrict__ x, const T* __restrict__ values, const int16_t* __restrict__ meta,
    const T* __restrict__ bias, T* __restrict__ y, float* __restrict__ partial, int* __restrict__ counters, int M,
    int N, int K, int64_t stride_xm, int64_t stride_vn, int64_t stride_mn, int chunks_per_split) {
  using L = PipeLayout<R, NT, WARPS>;
  extern __shared__ uint4 smem[];
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int brow0 = blockIdx.y * L::kRows;
  const int row0 = brow0 + warp * 16 * R;
  const int tok0 = blockIdx.x * (8 * NT);
  const int num_chunks = K / kPipeChunk;
  const int c_begin = blockIdx.z * chunks_per_split;
  const int c_end = min(c_begin + chunks_per_split, num_chunks);
  const PipeSources<T, R, NT, WARPS> src(brow0, tok0, M, N, stride_xm, stride_vn, stride_mn, tid);

  // ldmatrix lane addresses within a stage (step 0). A: matrix q = lane / 8 holds rows (lane % 8) + 8 (q % 2) of the
  // warp's 16-row tile, bytes 16 (q / 2) of the step: a0 .. a3 in mma order. B: matrix q holds token rows lane % 8 of
  // a token tile, columns 8q .. 8q + 7 of the step: b0 .. b3. Metadata: rows g and g + 8, word s.
  const int q = lane >> 3;
  const uint32_t a_off = kPipeRowBytes * (warp * 16 * R + (lane & 7) + 8 * (q & 1)) + 16 * (q >> 1);
  const uint32_t b_off = L::kWBytes + kPipeXBytes * (lane & 7) + 16 * q;
  const uint32_t m_off = kPipeRowBytes * (warp * 16 * R + g) + 128;
  const uint32_t odd = (t & 1) ? 0x7632u : 0x5410u;  // thread 0 of a quad: mma groups 0-3, thread 1: groups 4-7

  constexpr int kItems = 4 * NT;                      // (step, token tile) pairs of a chunk
  constexpr int kAhead = kItems > 4 ? 4 : kItems - 1;  // B fragments read ahead of their mma
  float acc[R][NT][4] = {};

  // One commit group per chunk (empty past the end), so "all but the newest S - 2 groups" is always chunk c.
#pragma unroll
  for (int u = 0; u < S - 1; ++u) {
    if (c_begin + u < c_end) pipe_copy(smem_addr + L::kStageBytes * u, src, x, values, meta, c_begin + u, tid);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int c = c_begin; c < c_end; ++c) {
    const int k = c - c_begin;
    asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2));
    __syncthreads();  // chunk c is in for every thread, and every thread is done with chunk c - 1's stage
    if (c + S - 1 < c_end) pipe_copy(smem_addr + L::kStageBytes * ((k + S - 1) % S), src, x, values, meta, c + S - 1,
                                    tid);
    asm volatile("cp.async.commit_group;\n" ::);
    const uint32_t stage = smem_addr + L::kStageBytes * (k % S);
    uint4 meta_g[R], meta_g8[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(meta_g[r].x), "=r"(meta_g[r].y), "=r"(meta_g[r].z), "=r"(meta_g[r].w)
                   : "r"(stage + m_off + kPipeRowBytes * 16 * r));
      asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(meta_g8[r].x), "=r"(meta_g8[r].y), "=r"(meta_g8[r].z), "=r"(meta_g8[r].w)
                   : "r"(stage + m_off + kPipeRowBytes * (16 * r + 8)));
    }
    // Fragments are read ahead of their mma (the asm statements keep their program order, so the order below is
    // the issue order): the A fragments and metadata of step s + 1 while step s multiplies, and the B fragment of
    // item i + kAhead before the mma of item i (item: a (step, token tile) pair, step-major). Without this, each
    // mma waited for the ldmatrix just before it (Nsight Compute: short-scoreboard stalls).
    uint32_t a[2][R][4], e[2][R], b[kAhead + 1][4];
    const auto load_a = [&](int s, uint32_t(&af)[R][4], uint32_t(&ef)[R]) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        ldmatrix_x4(af[r], stage + a_off + kPipeRowBytes * 16 * r + 32 * s);
        ef[r] = __byte_perm(word(meta_g[r], s), word(meta_g8[r], s), odd);
      }
    };
    const auto load_b = [&](int i, uint32_t(&bf)[4]) {
      ldmatrix_x4(bf, stage + b_off + kPipeXBytes * 8 * (i % NT) + 64 * (i / NT));
    };
    load_a(0, a[0], e[0]);
#pragma unroll
    for (int i = 0; i < kAhead; ++i) load_b(i, b[i]);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      if (s + 1 < 4) load_a(s + 1, a[(s + 1) & 1], e[(s + 1) & 1]);
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int i = s * NT + j;
        if (i + kAhead < kItems) load_b(i + kAhead, b[(i + kAhead) % (kAhead + 1)]);
#pragma unroll
        for (int r = 0; r < R; ++r) mma_sp<T>(acc[r][j], a[s & 1][r], b[i % (kAhead + 1)], e[s & 1][r]);
      }
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  finish_tile<T, R, NT, L::kThreads>(acc, bias, y, partial, counters, reinterpret_cast<float*>(smem), row0, tok0, M,
                                     N, tid, g, t);
}

}  // namespace
