// Small-M 2:4 sparse x dense product on the sparse tensor cores (mma.sp, sm_80+): y = x @ W.T (+ bias).
//
// W (N, K) is read in the package's canonical form: `values` (N, K/2) row-major (the kept pair of each group of
// 4 is one 32-bit word) and natural `meta` (N, K/16) int16 (4 bits per group: first index in the low bits).
// On the GPU `values` is the head of the cuSPARSELt compressed buffer: no second copy of the weight.
//
// The product is yT = W . xT: W is the sparse operand A of mma.sp.m16n8k32 (16 rows of W x 32 columns of K),
// x the dense operand B (32 columns of K x 8 tokens), the accumulator 16 rows x 8 tokens in fp32.
// Each warp owns R tiles of 16 rows and walks K in chunks of 256 columns (64 groups = 64 words per row). A
// thread loads 64 contiguous bytes of each of its rows per chunk (words 16t..16t+15, t = lane % 4: a warp reads
// 256 contiguous bytes per row), so the reduction over K is permuted: in step s (0..7) of a chunk, the mma's
// group j of the row is our group 16j+2s (j < 4) or 16(j-4)+2s+1 (j >= 4). The metadata register is rebuilt in
// that order from the row's 256 bits of natural metadata, and x is read at the same permuted columns, so every
// product pairs the right x with each value. No shared memory: A, metadata and x go global -> registers; with
// STAGES = 2 the next chunk is loaded before the current one is multiplied.
//
// Split-K (grid.z > 1) writes fp32 partial sums to a (split, M, N) buffer that the caller reduces in a fixed
// order (deterministic), as the Triton kernels do.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <cstdint>

namespace {

constexpr int kWarps = 4;
constexpr int kChunk = 256;  // K columns per main-loop step

template <typename T>
struct MmaSp;

template <>
struct MmaSp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t e) {
    asm volatile(
        "mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, "
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
        "mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, "
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

// What one K chunk (256 columns = 64 groups per row) needs in registers: the thread's 64 contiguous bytes of
// values (words 16t .. 16t+15) and the row's 32 bytes of natural metadata for each of its 2R rows, and its
// B fragments (x at the permuted columns) for the chunk's 8 k32 steps. In step s the thread feeds the mma
// group t with its word 2s and the group t+4 with its word 2s+1: mma group j < 4 is our group 16j + 2s,
// j >= 4 our group 16(j-4) + 2s + 1.
template <int R, int NT>
struct Chunk {
  uint4 a[R][2][4];
  uint4 m[R][2][2];
  uint32_t b[8][NT][4];
};

__device__ __forceinline__ int our_group(int j, int s) { return j < 4 ? 16 * j + 2 * s : 16 * (j - 4) + 2 * s + 1; }

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

template <int R, int NT>
__device__ __forceinline__ void load_chunk(Chunk<R, NT>& f, const uint4* (&vrow)[R][2], const uint4* (&mrow)[R][2],
                                           const uint32_t* (&xrow)[NT], int c, int t) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int q = 0; q < 4; ++q) f.a[r][h][q] = __ldg(vrow[r][h] + c * 16 + q);
      f.m[r][h][0] = __ldg(mrow[r][h] + 2 * c);
      f.m[r][h][1] = __ldg(mrow[r][h] + 2 * c + 1);
    }
  // B register i holds K rows 8i + 2t, +1 of the mma: the mma's group 2i + t/2 at positions 2(t%2), +1,
  // i.e. one 32-bit word of x at our permuted column.
#pragma unroll
  for (int s = 0; s < 8; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int col = c * kChunk + 4 * our_group(2 * i + (t >> 1), s) + 2 * (t & 1);
#pragma unroll
      for (int j = 0; j < NT; ++j) f.b[s][j][i] = __ldg(xrow[j] + (col >> 1));
    }
}

template <typename T, int R, int NT>
__device__ __forceinline__ void mma_chunk(float (&acc)[R][NT][4], const Chunk<R, NT>& f, int t) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const uint32_t(&mg)[8] = *reinterpret_cast<const uint32_t(*)[8]>(&f.m[r][0][0]);
    const uint32_t(&m8)[8] = *reinterpret_cast<const uint32_t(*)[8]>(&f.m[r][1][0]);
    const uint32_t(&wg)[16] = *reinterpret_cast<const uint32_t(*)[16]>(&f.a[r][0][0]);
    const uint32_t(&w8)[16] = *reinterpret_cast<const uint32_t(*)[16]>(&f.a[r][1][0]);
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const uint32_t ng = step_nibbles(mg, s), n8 = step_nibbles(m8, s);
      // Metadata register (sparsity selector 0, found on the H100 against F.linear): thread 0 of a quad holds
      // mma groups 0-3 of rows g (low 16 bits) and g + 8 (high 16 bits), thread 1 groups 4-7.
      const uint32_t e = (t & 1) ? ((ng >> 16) | (n8 & 0xFFFF0000u)) : ((ng & 0xFFFFu) | (n8 << 16));
      const uint32_t a[4] = {wg[2 * s], w8[2 * s], wg[2 * s + 1], w8[2 * s + 1]};
#pragma unroll
      for (int j = 0; j < NT; ++j) MmaSp<T>::run(acc[r][j], a, f.b[s][j], e);
    }
  }
}

// STAGES chunks live in registers: while chunk c is multiplied, chunks c+1 .. c+STAGES-1 are in flight.
template <typename T, int R, int NT, int STAGES>
__global__ void __launch_bounds__(kWarps * 32) spmm24_mma_kernel(
    const T* __restrict__ x, const T* __restrict__ values, const int16_t* __restrict__ meta,
    const T* __restrict__ bias, T* __restrict__ y, float* __restrict__ partial, int M, int N, int K,
    int64_t stride_xm, int64_t stride_vn, int64_t stride_mn, int chunks_per_split) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;  // groupID
  const int t = lane & 3;   // thread in group
  const int row0 = (blockIdx.x * kWarps + warp) * (16 * R);
  const int tok0 = blockIdx.y * (8 * NT);
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
  // Tokens of this thread's B fragments: tok0 + 8j + g (clamped; their columns are not stored).
  const uint32_t* xrow[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j)
    xrow[j] = reinterpret_cast<const uint32_t*>(x + min(tok0 + 8 * j + g, M - 1) * stride_xm);

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;

  Chunk<R, NT> f[STAGES];
#pragma unroll
  for (int u = 0; u < STAGES - 1; ++u)
    if (c_begin + u < c_end) load_chunk(f[u], vrow, mrow, xrow, c_begin + u, t);
  for (int c = c_begin; c < c_end; c += STAGES) {
#pragma unroll
    for (int u = 0; u < STAGES; ++u) {  // unrolled: every ring index is a compile-time constant
      const int cc = c + u;
      if (cc + STAGES - 1 < c_end) load_chunk(f[(u + STAGES - 1) % STAGES], vrow, mrow, xrow, cc + STAGES - 1, t);
      if (cc < c_end) mma_chunk<T, R, NT>(acc, f[u], t);
    }
  }

  // Accumulator: c0, c1 -> row g, tokens 2t, 2t+1; c2, c3 -> row g + 8.
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + 16 * r + g + 8 * h;
      if (row >= N) continue;
      const float b_row = (partial == nullptr && bias != nullptr) ? to_float(bias[row]) : 0.f;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int tok = tok0 + 8 * j + 2 * t + q;
          if (tok >= M) continue;
          const float v = acc[r][j][2 * h + q];
          if (partial != nullptr) {
            partial[(static_cast<int64_t>(blockIdx.z) * M + tok) * N + row] = v;
          } else {
            y[static_cast<int64_t>(tok) * N + row] = from_float<T>(v + b_row);
          }
        }
    }
}

template <typename T, int R, int NT, int STAGES>
void launch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
            const c10::optional<torch::Tensor>& bias, torch::Tensor& y, float* partial, int split,
            cudaStream_t stream) {
  const int M = x.size(0), K = x.size(1), N = values.size(0);
  const int num_chunks = K / kChunk;
  const int per_split = (num_chunks + split - 1) / split;
  dim3 grid((N + kWarps * 16 * R - 1) / (kWarps * 16 * R), (M + 8 * NT - 1) / (8 * NT), split);
  const T* bias_ptr = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  auto args = std::make_tuple(reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(values.data_ptr()),
                              meta.data_ptr<int16_t>(), bias_ptr, reinterpret_cast<T*>(y.data_ptr()), partial, M, N,
                              K, x.stride(0), values.stride(0), meta.stride(0), per_split);
  std::apply([&](auto... a) { spmm24_mma_kernel<T, R, NT, STAGES><<<grid, kWarps * 32, 0, stream>>>(a...); }, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The instantiated tiles: (rows per warp / 16, tokens per block / 8, stages).
#define SPARSE_LLM_MMA_TILES(X) \
  X(1, 1, 1) X(1, 1, 2) X(2, 1, 1) X(2, 1, 2) X(4, 1, 1) X(1, 2, 1) X(1, 2, 2) X(2, 2, 1) X(1, 4, 1) X(2, 4, 1)

bool tile_supported(int rows, int tokens, int stages) {
#define SPARSE_LLM_MMA_MATCH(R_, NT_, S_) \
  if (rows == R_ && tokens == NT_ && stages == S_) return true;
  SPARSE_LLM_MMA_TILES(SPARSE_LLM_MMA_MATCH)
#undef SPARSE_LLM_MMA_MATCH
  return false;
}

template <typename T>
void dispatch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
              const c10::optional<torch::Tensor>& bias, torch::Tensor& y, float* partial, int rows, int tokens,
              int stages, int split, cudaStream_t stream) {
#define SPARSE_LLM_MMA_CASE(R_, NT_, S_)                                           \
  if (rows == R_ && tokens == NT_ && stages == S_) {                               \
    launch<T, R_, NT_, S_>(x, values, meta, bias, y, partial, split, stream);      \
    return;                                                                        \
  }
  SPARSE_LLM_MMA_TILES(SPARSE_LLM_MMA_CASE)
#undef SPARSE_LLM_MMA_CASE
}

}  // namespace

// y (M, N) = x (M, K) @ W.T + bias, tiles as listed in SPARSE_LLM_MMA_TILES.
// split > 1: returns the fp32 (split, M, N) partial sums (bias not added) for the caller to reduce.
torch::Tensor spmm24_mma(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                         const c10::optional<torch::Tensor>& bias, int64_t rows_per_warp, int64_t tokens_per_block,
                         int64_t split, int64_t stages) {
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
              "spmm24_mma: row strides must keep 4-byte x, 16-byte values and 16-byte meta loads aligned");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 == 0 && reinterpret_cast<uintptr_t>(values.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(meta.data_ptr()) % 16 == 0,
              "spmm24_mma: misaligned x, values or meta storage");
  TORCH_CHECK(split >= 1 && split <= K / kChunk, "spmm24_mma: split must be in [1, K/256]");
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->device() == x.device() && bias->scalar_type() == x.scalar_type() &&
                    bias->dim() == 1 && bias->size(0) == N && bias->stride(0) == 1,
                "spmm24_mma: bias must be a contiguous (N,) tensor of x's dtype on x's device");
  }
  TORCH_CHECK(rows_per_warp % 16 == 0 && tokens_per_block % 8 == 0 &&
                  tile_supported(static_cast<int>(rows_per_warp / 16), static_cast<int>(tokens_per_block / 8),
                                 static_cast<int>(stages)),
              "spmm24_mma: no kernel for rows_per_warp=", rows_per_warp, " tokens_per_block=", tokens_per_block,
              " stages=", stages);
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  torch::Tensor y, partial;
  float* partial_ptr = nullptr;
  if (split > 1) {
    partial = torch::empty({split, M, N}, x.options().dtype(at::kFloat));
    partial_ptr = partial.data_ptr<float>();
    y = partial;
  } else {
    y = torch::empty({M, N}, x.options());
  }
  if (M == 0) return y;
  const int rows = static_cast<int>(rows_per_warp / 16), tokens = static_cast<int>(tokens_per_block / 8);
  if (x.scalar_type() == at::kBFloat16) {
    dispatch<__nv_bfloat16>(x, values, meta, bias, y, partial_ptr, rows, tokens, static_cast<int>(stages), split, stream);
  } else {
    dispatch<__half>(x, values, meta, bias, y, partial_ptr, rows, tokens, static_cast<int>(stages), split, stream);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm24_mma", &spmm24_mma, "y = x @ W.T (+ bias) for a canonical 2:4 W on the sparse tensor cores",
        py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("bias"), py::arg("rows_per_warp"),
        py::arg("tokens_per_block"), py::arg("split"), py::arg("stages"));
}
