// Small-M 2:4 sparse x dense product on the sparse tensor cores (mma.sp, sm_80+): y = x @ W.T (+ bias).
//
// W (N, K) is read in the package's canonical form: `values` (N, K/2) row-major (the kept pair of each group of
// 4 is one 32-bit word) and natural `meta` (N, K/16) int16 (4 bits per group: first index in the low bits).
// On the GPU `values` is the head of the cuSPARSELt compressed buffer: no second copy of the weight.
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
//
// Split-K (grid.z > 1): each block writes its fp32 partial tile to a workspace and counts itself in on the
// tile's counter; the last block of a tile adds the partials in split order (the same result on every run),
// adds the bias, writes y and resets the counter to 0 for the next call. One kernel per product.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

namespace {

constexpr int kChunk = 256;    // K columns per main-loop step
constexpr int kStepStride = 20;  // 32-bit words per step in a staged token row (16 used; 20: 2-way stores, not 4)
constexpr int kXStride = 176;    // words per staged token row: >= 8 steps, = 16 mod 32 (conflict-free reads)

// mma.sp::ordered_metadata (PTX ISA 8.5, CUDA 12.5+): the same product for metadata whose two indices per group are
// increasing, which the canonical format guarantees. ptxas advises it over plain .sp (expected to be slower on later
// architectures); on the H100 both run at the same rate (bench/mma_peak.py: 9 cycles per m16n8k32 per sub-partition).
#if defined(__CUDACC_VER_MAJOR__) && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5))
#define SPARSE_LLM_MMA_SP "mma.sp::ordered_metadata"
#else
#define SPARSE_LLM_MMA_SP "mma.sp"
#endif

template <typename T>
struct MmaSp;

template <>
struct MmaSp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t e) {
    asm volatile(
        SPARSE_LLM_MMA_SP ".sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, "
        "{%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  }
};

template <>
struct MmaSp<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t e) {
    asm volatile(
        SPARSE_LLM_MMA_SP ".sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, "
        "{%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  }
};

// torch builds extensions without the implicit half/bfloat16 conversions: explicit ones.
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

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
      for (int r = 0; r < R; ++r) MmaSp<T>::run(acc[r][j], a[r], b, e[r]);
    }
  }
}

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

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;

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

  finish_tile<T, R, NT, kThreads>(acc, bias, y, partial, counters, row0, tok0, M, N, tid, g, t);
}

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

// Per-thread source pointers of the copies of chunk 0 (chunk c adds c * 128 columns): computed once per block.
template <typename T, int R, int NT, int WARPS>
struct PipeSources {
  using L = PipeLayout<R, NT, WARPS>;
  static constexpr int kVPasses = (L::kVUnits + L::kThreads - 1) / L::kThreads;
  static constexpr int kMPasses = (L::kRows + L::kThreads - 1) / L::kThreads;
  static constexpr int kXPasses = (L::kXUnits + L::kThreads - 1) / L::kThreads;
  const T* v[kVPasses];
  const int16_t* m[kMPasses];
  const T* x[kXPasses];
  uint32_t xbytes[kXPasses];  // 16, or 0 for token rows past M (zero-filled)

  __device__ __forceinline__ PipeSources(const T* __restrict__ xg, const T* __restrict__ values,
                                         const int16_t* __restrict__ meta, int brow0, int tok0, int M, int N,
                                         int64_t stride_xm, int64_t stride_vn, int64_t stride_mn, int tid) {
#pragma unroll
    for (int p = 0; p < kVPasses; ++p) {  // unit u: row u / 8, 16-byte piece u % 8 of the row's 128 bytes
      const int u = min(tid + p * L::kThreads, L::kVUnits - 1);
      const int row = min(brow0 + u / 8, N - 1);  // rows past N: any valid row (their results are not stored)
      v[p] = values + row * stride_vn + 8 * (u % 8);
    }
#pragma unroll
    for (int p = 0; p < kMPasses; ++p) {
      const int row = min(brow0 + min(tid + p * L::kThreads, L::kRows - 1), N - 1);
      m[p] = meta + row * stride_mn;
    }
#pragma unroll
    for (int p = 0; p < kXPasses; ++p) {  // unit u: token row u / 16, piece u % 16 of its 256 bytes
      const int u = min(tid + p * L::kThreads, L::kXUnits - 1);
      const int tok = tok0 + u / 16;
      x[p] = xg + (tok < M ? tok : 0) * stride_xm + 8 * (u % 16);
      xbytes[p] = tok < M ? 16u : 0u;
    }
  }
};

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, uint32_t bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

// Issues the copies of chunk c into the stage at shared address `stage`.
template <typename T, int R, int NT, int WARPS>
__device__ __forceinline__ void pipe_copy(uint32_t stage, const PipeSources<T, R, NT, WARPS>& src, int c, int tid) {
  using L = PipeLayout<R, NT, WARPS>;
  using S = PipeSources<T, R, NT, WARPS>;
#pragma unroll
  for (int p = 0; p < S::kVPasses; ++p) {
    const int u = tid + p * L::kThreads;
    if (L::kVUnits % L::kThreads == 0 || u < L::kVUnits)
      cp_async16(stage + kPipeRowBytes * (u / 8) + 16 * (u % 8), src.v[p] + c * (kPipeChunk / 2));
  }
#pragma unroll
  for (int p = 0; p < S::kMPasses; ++p) {
    const int r = tid + p * L::kThreads;
    if (L::kRows % L::kThreads == 0 || r < L::kRows)
      cp_async16(stage + kPipeRowBytes * r + 128, src.m[p] + c * (kPipeChunk / 16));
  }
#pragma unroll
  for (int p = 0; p < S::kXPasses; ++p) {
    const int u = tid + p * L::kThreads;
    if (L::kXUnits % L::kThreads == 0 || u < L::kXUnits)
      cp_async16(stage + L::kWBytes + kPipeXBytes * (u / 16) + 16 * (u % 16), src.x[p] + c * kPipeChunk,
                 src.xbytes[p]);
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
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
  const PipeSources<T, R, NT, WARPS> src(x, values, meta, brow0, tok0, M, N, stride_xm, stride_vn, stride_mn, tid);

  // ldmatrix lane addresses within a stage (step 0). A: matrix q = lane / 8 holds rows (lane % 8) + 8 (q % 2) of the
  // warp's 16-row tile, bytes 16 (q / 2) of the step: a0 .. a3 in mma order. B: matrix q holds token rows lane % 8 of
  // a token tile, columns 8q .. 8q + 7 of the step: b0 .. b3. Metadata: rows g and g + 8, word s.
  const int q = lane >> 3;
  const uint32_t a_off = kPipeRowBytes * (warp * 16 * R + (lane & 7) + 8 * (q & 1)) + 16 * (q >> 1);
  const uint32_t b_off = L::kWBytes + kPipeXBytes * (lane & 7) + 16 * q;
  const uint32_t m_off = kPipeRowBytes * (warp * 16 * R + g) + 128;
  const uint32_t odd = (t & 1) ? 0x7632u : 0x5410u;  // thread 0 of a quad: mma groups 0-3, thread 1: groups 4-7

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;

  // One commit group per chunk (empty past the end), so "all but the newest S - 2 groups" is always chunk c.
#pragma unroll
  for (int u = 0; u < S - 1; ++u) {
    if (c_begin + u < c_end) pipe_copy(smem_addr + L::kStageBytes * u, src, c_begin + u, tid);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int c = c_begin; c < c_end; ++c) {
    const int k = c - c_begin;
    asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2));
    __syncthreads();  // chunk c is in for every thread, and every thread is done with chunk c - 1's stage
    if (c + S - 1 < c_end) pipe_copy(smem_addr + L::kStageBytes * ((k + S - 1) % S), src, c + S - 1, tid);
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
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      uint32_t a[R][4], e[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        ldmatrix_x4(a[r], stage + a_off + kPipeRowBytes * 16 * r + 32 * s);
        const uint32_t mg = s == 0 ? meta_g[r].x : s == 1 ? meta_g[r].y : s == 2 ? meta_g[r].z : meta_g[r].w;
        const uint32_t m8 = s == 0 ? meta_g8[r].x : s == 1 ? meta_g8[r].y : s == 2 ? meta_g8[r].z : meta_g8[r].w;
        e[r] = __byte_perm(mg, m8, odd);
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        uint32_t b[4];
        ldmatrix_x4(b, stage + b_off + kPipeXBytes * 8 * j + 64 * s);
#pragma unroll
        for (int r = 0; r < R; ++r) MmaSp<T>::run(acc[r][j], a[r], b, e[r]);
      }
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  finish_tile<T, R, NT, L::kThreads>(acc, bias, y, partial, counters, row0, tok0, M, N, tid, g, t);
}

// Stages >= 3: the pipelined kernel (W through shared memory, 128-column chunks); 1-2: W in registers (256).
constexpr bool is_pipelined(int stages) { return stages >= 3; }
constexpr int chunk_columns(int stages) { return is_pipelined(stages) ? kPipeChunk : kChunk; }

template <typename T, int R, int NT, int STAGES, int WARPS>
void launch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
            const c10::optional<torch::Tensor>& bias, torch::Tensor& y, float* partial, int* counters, int split,
            cudaStream_t stream) {
  const int M = x.size(0), K = x.size(1), N = values.size(0);
  const int num_chunks = K / chunk_columns(STAGES);
  const int per_split = (num_chunks + split - 1) / split;
  dim3 grid((M + 8 * NT - 1) / (8 * NT), (N + WARPS * 16 * R - 1) / (WARPS * 16 * R), split);
  constexpr bool kPipe = is_pipelined(STAGES);
  const auto kernel = [] {  // only the chosen kernel is instantiated
    if constexpr (kPipe) {
      return spmm24_mma_pipe_kernel<T, R, NT, STAGES, WARPS>;
    } else {
      return spmm24_mma_kernel<T, R, NT, STAGES, WARPS>;
    }
  }();
  constexpr int kSmem = kPipe ? STAGES * PipeLayout<R, NT, WARPS>::kStageBytes : 2 * 8 * NT * kXStride * 4;
  if (kSmem > 48 * 1024) {  // once per device and instantiation, not on every launch
    static std::atomic<uint64_t> configured{0};
    const uint64_t bit = uint64_t{1} << (x.get_device() & 63);
    if (!(configured.load() & bit)) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          cudaSharedmemCarveoutMaxShared));
      configured.fetch_or(bit);
    }
  }
  const T* bias_ptr = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  kernel<<<grid, WARPS * 32, kSmem, stream>>>(
      reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(values.data_ptr()),
      meta.data_ptr<int16_t>(), bias_ptr, reinterpret_cast<T*>(y.data_ptr()), partial, counters, M, N, K,
      x.stride(0), values.stride(0), meta.stride(0), per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The instantiated tiles: (rows per warp / 16, tokens per block / 8, stages, warps); stages >= 3: pipelined.
#define SPARSE_LLM_MMA_TILES(X)                                                                                 \
  X(1, 1, 1, 4) X(1, 1, 2, 4) X(2, 1, 1, 4) X(2, 1, 2, 4) X(4, 1, 1, 4) X(1, 2, 1, 4) X(2, 2, 1, 4) X(1, 4, 1, 4) \
      X(2, 4, 1, 4) X(2, 4, 1, 8) X(1, 8, 1, 4) X(1, 8, 1, 8) X(2, 8, 1, 8) X(1, 1, 4, 4) X(2, 1, 4, 4)         \
          X(2, 2, 4, 4) X(2, 4, 3, 4) X(2, 8, 3, 4) X(2, 8, 3, 8)

bool tile_supported(int rows, int tokens, int stages, int warps) {
#define SPARSE_LLM_MMA_MATCH(R_, NT_, S_, W_) \
  if (rows == R_ && tokens == NT_ && stages == S_ && warps == W_) return true;
  SPARSE_LLM_MMA_TILES(SPARSE_LLM_MMA_MATCH)
#undef SPARSE_LLM_MMA_MATCH
  return false;
}

template <typename T>
void dispatch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
              const c10::optional<torch::Tensor>& bias, torch::Tensor& y, float* partial, int* counters, int rows,
              int tokens, int stages, int warps, int split, cudaStream_t stream) {
#define SPARSE_LLM_MMA_CASE(R_, NT_, S_, W_)                                                 \
  if (rows == R_ && tokens == NT_ && stages == S_ && warps == W_) {                          \
    launch<T, R_, NT_, S_, W_>(x, values, meta, bias, y, partial, counters, split, stream);  \
    return;                                                                                  \
  }
  SPARSE_LLM_MMA_TILES(SPARSE_LLM_MMA_CASE)
#undef SPARSE_LLM_MMA_CASE
}

// Split-K tile counters, one zeroed buffer per (device, stream): every kernel leaves its counters at 0, and
// kernels of one stream run one after the other, so the buffer is reused without a reset. (Two products that
// run at the same time on two streams get two buffers.) A stream being captured into a CUDA graph cannot zero a
// new buffer now (the memset would only run at replay), so there each call gets its own zeroed counters: the
// graph zeroes them at every replay, whatever order its graphs are replayed in.
int* tile_counters(const torch::Tensor& like, cudaStream_t stream, int64_t tiles, torch::Tensor& per_call) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, torch::Tensor> buffers;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = buffers.find({like.get_device(), stream});
  if (found != buffers.end() && found->second.numel() >= tiles) return found->second.data_ptr<int>();
  if (capture != cudaStreamCaptureStatusNone) {
    per_call = torch::zeros({tiles}, like.options().dtype(at::kInt));
    return per_call.data_ptr<int>();
  }
  torch::Tensor& buf = buffers[{like.get_device(), stream}];
  buf = torch::zeros({std::max<int64_t>(tiles, 4096)}, like.options().dtype(at::kInt));
  return buf.data_ptr<int>();
}

}  // namespace

// y (M, N) = x (M, K) @ W.T + bias, tiles as listed in SPARSE_LLM_MMA_TILES; split > 1 splits K over grid.z.
torch::Tensor spmm24_mma(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                         const c10::optional<torch::Tensor>& bias, int64_t rows_per_warp, int64_t tokens_per_block,
                         int64_t split, int64_t stages, int64_t warps) {
  TORCH_CHECK(x.is_cuda() && values.is_cuda() && meta.is_cuda(), "spmm24_mma: x, values and meta must be CUDA tensors");
  TORCH_CHECK(x.device() == values.device() && meta.device() == values.device(),
              "spmm24_mma: x, values and meta must be on one device");
  TORCH_CHECK(x.dim() == 2 && values.dim() == 2 && meta.dim() == 2, "spmm24_mma: x, values, meta must be 2-D");
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), "spmm24_mma: x dtype ", x.scalar_type(),
              " does not match the weight dtype ", values.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "spmm24_mma: float16 or bfloat16 only, got ", x.scalar_type());
  TORCH_CHECK(meta.scalar_type() == at::kShort, "spmm24_mma: meta must be int16");
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK(values.size(1) * 2 == K, "spmm24_mma: x has ", K, " features, the weight expects ", values.size(1) * 2);
  TORCH_CHECK(meta.size(0) == N && meta.size(1) * 16 == K, "spmm24_mma: meta shape does not match the weight");
  TORCH_CHECK(K % kChunk == 0, "spmm24_mma: K must be a multiple of ", kChunk, ", got ", K);
  TORCH_CHECK(x.stride(1) == 1 && values.stride(1) == 1 && meta.stride(1) == 1, "spmm24_mma: unit column strides");
  TORCH_CHECK(x.stride(0) % 2 == 0 && values.stride(0) % 8 == 0 && meta.stride(0) % 8 == 0,
              "spmm24_mma: row strides must keep the 4-byte x and 16-byte values and meta loads aligned");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 == 0 &&
                  reinterpret_cast<uintptr_t>(values.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(meta.data_ptr()) % 16 == 0,
              "spmm24_mma: misaligned x, values or meta storage");
  TORCH_CHECK(!is_pipelined(static_cast<int>(stages)) ||
                  (x.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0),
              "spmm24_mma: the pipelined kernel (stages >= 3) copies x in 16-byte pieces: its rows must be 16-byte "
              "aligned (row stride a multiple of 8 elements, storage 16-byte aligned)");
  TORCH_CHECK(split >= 1 && split <= K / chunk_columns(static_cast<int>(stages)), "spmm24_mma: split must be in [1, K/",
              chunk_columns(static_cast<int>(stages)), "] for stages=", stages, ", got ", split);
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->device() == x.device() && bias->scalar_type() == x.scalar_type() &&
                    bias->dim() == 1 && bias->size(0) == N && bias->stride(0) == 1,
                "spmm24_mma: bias must be a contiguous (N,) tensor of x's dtype on x's device");
  }
  TORCH_CHECK(rows_per_warp % 16 == 0 && tokens_per_block % 8 == 0 &&
                  tile_supported(static_cast<int>(rows_per_warp / 16), static_cast<int>(tokens_per_block / 8),
                                 static_cast<int>(stages), static_cast<int>(warps)),
              "spmm24_mma: no kernel for rows_per_warp=", rows_per_warp, " tokens_per_block=", tokens_per_block,
              " stages=", stages, " warps=", warps);
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  torch::Tensor y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  const int rows = static_cast<int>(rows_per_warp / 16), tokens = static_cast<int>(tokens_per_block / 8);
  torch::Tensor partial, counters_per_call;
  float* partial_ptr = nullptr;
  int* counters = nullptr;
  if (split > 1) {
    const int64_t tiles = ((M + tokens_per_block - 1) / tokens_per_block) *
                          ((N + warps * rows_per_warp - 1) / (warps * rows_per_warp));
    partial = torch::empty({split * tiles * warps * rows_per_warp * tokens_per_block}, x.options().dtype(at::kFloat));
    partial_ptr = partial.data_ptr<float>();
    counters = tile_counters(x, stream, tiles, counters_per_call);
  }
  if (x.scalar_type() == at::kBFloat16) {
    dispatch<__nv_bfloat16>(x, values, meta, bias, y, partial_ptr, counters, rows, tokens, static_cast<int>(stages),
                            static_cast<int>(warps), static_cast<int>(split), stream);
  } else {
    dispatch<__half>(x, values, meta, bias, y, partial_ptr, counters, rows, tokens, static_cast<int>(stages),
                     static_cast<int>(warps), static_cast<int>(split), stream);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm24_mma", &spmm24_mma, "y = x @ W.T (+ bias) for a canonical 2:4 W on the sparse tensor cores",
        py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("bias"), py::arg("rows_per_warp"),
        py::arg("tokens_per_block"), py::arg("split"), py::arg("stages"), py::arg("warps"));
}
