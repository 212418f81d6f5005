// Small-M 2:4 sparse x dense product on the sparse tensor cores (mma.sp, sm_80+): y = x @ W.T (+ bias).
//
// W (N, K) is read in the package's canonical form: `values` (N, K/2) row-major (the kept pair of each group of
// 4 is one 32-bit word) and natural `meta` (N, K/16) int16 (4 bits per group: first index in the low bits).
// On the GPU `values` is the head of the cuSPARSELt compressed buffer: no second copy of the weight.
//
// Two kernels compute it, one file each: spmm24_mma_regs.cuh (stages 1-2: W chunks in registers, the decode
// kernel) and spmm24_mma_pipe.cuh (stages >= 3: W and x through a cp.async shared-memory ring); what they share is
// in spmm24_mma_common.cuh. This file launches them, lists the instantiated tiles and binds the op.
//
// Split-K (grid.z > 1): when asked (`cluster`), up to 8 pieces on an sm_90 GPU run as one thread-block cluster and
// the blocks add the fp32 partial tiles from their peers' shared memory, a slice each; otherwise each block writes
// its partial tile to a workspace and counts itself in on the tile's counter, and the last block of a tile adds the
// partials. Both add in split order (the same bits, on every run), then add the bias and write y. One kernel per
// product. Which of the two is faster depends on the shape (bench/results/mma_variant_cluster_h100.json): the tuning
// tries both.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "spmm24_mma_pipe.cuh"
#include "spmm24_mma_regs.cuh"
#include "spmm24_mma_host.cuh"

namespace {

// Stages >= 3: the pipelined kernel (W through shared memory, 128-column chunks); 1-2: W in registers (256).
constexpr bool is_pipelined(int stages) { return stages >= 3; }
constexpr int chunk_columns(int stages) { return is_pipelined(stages) ? kPipeChunk : kChunk; }

// Split-K pieces up to this many per tile may be reduced through distributed shared memory, as one thread-block
// cluster (compute capability 9.0+; at most kMaxClusterSplit, the portable cluster size); more pieces, an older GPU,
// or a grid whose clusters cannot all be resident at once go through the global workspace. 1 turns the cluster path
// off (bench/mma_variant.py compares the two).
#ifndef SPARSE_LLM_CLUSTER_SPLIT_MAX
#define SPARSE_LLM_CLUSTER_SPLIT_MAX kMaxClusterSplit
#endif
static_assert(SPARSE_LLM_CLUSTER_SPLIT_MAX <= kMaxClusterSplit, "finish_tile reads at most kMaxClusterSplit peers");

// Compiled like the kernels: its PTX version says whether the code running on this device has the cluster path
// (a compute_80 build JIT-compiled for an H100 does not).
__global__ void arch_probe() {}

bool cluster_capable(int device) {
  static std::atomic<uint64_t> known{0}, capable{0};
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (!(known.load() & bit)) {
    int launch = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&launch, cudaDevAttrClusterLaunch, device));
    cudaFuncAttributes probe{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&probe, arch_probe));
    if (launch && probe.ptxVersion >= 90) capable.fetch_or(bit);
    known.fetch_or(bit);
  }
  return capable.load() & bit;
}

template <typename T, int R, int NT, int STAGES, int WARPS>
void launch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
            const c10::optional<torch::Tensor>& bias, torch::Tensor& y, SplitWorkspace& workspace, int split,
            bool allow_cluster, cudaStream_t stream) {
  const int M = x.size(0), K = x.size(1), N = values.size(0);
  const int num_chunks = K / chunk_columns(STAGES);
  const int per_split = (num_chunks + split - 1) / split;
  const dim3 grid((M + 8 * NT - 1) / (8 * NT), (N + WARPS * 16 * R - 1) / (WARPS * 16 * R), split);
  const dim3 block(WARPS * 32);
  constexpr bool kPipe = is_pipelined(STAGES);
  const auto kernel = [] {  // only the chosen kernel is instantiated
    if constexpr (kPipe) {
      return spmm24_mma_pipe_kernel<T, R, NT, STAGES, WARPS>;
    } else {
      return spmm24_mma_kernel<T, R, NT, STAGES, WARPS>;
    }
  }();
  // Dynamic shared memory: the main loop's buffers, and at least a partial tile for the cluster split-K.
  constexpr int kValues = R * NT * 4;  // accumulators per thread
  constexpr int kLoopSmem = kPipe ? STAGES * PipeLayout<R, NT, WARPS>::kStageBytes : 2 * 8 * NT * kXStride * 4;
  constexpr int kSmem = std::max(kLoopSmem, kValues * WARPS * 32 * 4);
  const int device = x.get_device();
  if (kSmem > 48 * 1024) {  // once per device and instantiation, not on every launch
    static std::atomic<uint64_t> configured{0};
    const uint64_t bit = uint64_t{1} << (device & 63);
    if (!(configured.load() & bit)) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          cudaSharedmemCarveoutMaxShared));
      configured.fetch_or(bit);
    }
  }
  cudaLaunchAttribute attributes[2] = {};
  cudaLaunchConfig_t config{};
  bool cluster = allow_cluster && split > 1 && split <= SPARSE_LLM_CLUSTER_SPLIT_MAX && cluster_capable(device);
  if (cluster) {  // only when every cluster (one per output tile) is resident at once: measured per instantiation
    config = launch_config(grid, block, kSmem, stream, dim3(1, 1, split), false, attributes);
    static std::mutex mutex;
    static std::map<std::pair<int, int>, int> resident;  // (device, split) -> most clusters at once
    const std::lock_guard<std::mutex> lock(mutex);
    auto found = resident.find({device, split});
    if (found == resident.end()) {
      int clusters = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
      found = resident.emplace(std::make_pair(device, split), clusters).first;
    }
    cluster = static_cast<int64_t>(grid.x) * grid.y <= found->second;
  }
  float* partial = nullptr;
  int* counters = nullptr;
  if (split > 1 && !cluster) std::tie(partial, counters) = workspace.get(split, grid.x * grid.y, kValues * WARPS * 32);
  const T* bias_ptr = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const T* vp = reinterpret_cast<const T*>(values.data_ptr());
  const int16_t* mp = meta.data_ptr<int16_t>();
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  if (cluster) {  // the split pieces of a tile as one cluster: grid.z = split = cluster size
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, xp, vp, mp, bias_ptr, yp, partial, counters, M, N, K,
                                      x.stride(0), values.stride(0), meta.stride(0), per_split));
    return;
  }
  kernel<<<grid, block, kSmem, stream>>>(xp, vp, mp, bias_ptr, yp, partial, counters, M, N, K, x.stride(0),
                                         values.stride(0), meta.stride(0), per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The instantiated tiles: (rows per warp / 16, tokens per block / 8, stages, warps); stages >= 3: pipelined.
#define SPARSE_LLM_MMA_TILES(X)                                                                                 \
  X(1, 1, 1, 4) X(1, 1, 2, 4) X(2, 1, 1, 4) X(2, 1, 2, 4) X(4, 1, 1, 4) X(1, 2, 1, 4) X(2, 2, 1, 4) X(1, 4, 1, 4) \
      X(2, 4, 1, 4) X(2, 4, 1, 8) X(1, 8, 1, 4) X(1, 8, 1, 8) X(2, 8, 1, 8) X(1, 1, 4, 4) X(2, 1, 4, 4)         \
          X(2, 2, 4, 4) X(1, 4, 3, 4) X(2, 4, 3, 4) X(1, 8, 3, 4) X(2, 8, 3, 4) X(2, 8, 3, 8) X(1, 16, 3, 8)       \
              X(2, 16, 3, 8)

bool tile_supported(int rows, int tokens, int stages, int warps) {
#define SPARSE_LLM_MMA_MATCH(R_, NT_, S_, W_) \
  if (rows == R_ && tokens == NT_ && stages == S_ && warps == W_) return true;
  SPARSE_LLM_MMA_TILES(SPARSE_LLM_MMA_MATCH)
#undef SPARSE_LLM_MMA_MATCH
  return false;
}

template <typename T>
void dispatch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
              const c10::optional<torch::Tensor>& bias, torch::Tensor& y, SplitWorkspace& workspace, int rows,
              int tokens, int stages, int warps, int split, bool cluster, cudaStream_t stream) {
#define SPARSE_LLM_MMA_CASE(R_, NT_, S_, W_)                                                     \
  if (rows == R_ && tokens == NT_ && stages == S_ && warps == W_) {                              \
    launch<T, R_, NT_, S_, W_>(x, values, meta, bias, y, workspace, split, cluster, stream);     \
    return;                                                                                      \
  }
  SPARSE_LLM_MMA_TILES(SPARSE_LLM_MMA_CASE)
#undef SPARSE_LLM_MMA_CASE
}

}  // namespace

// y (M, N) = x (M, K) @ W.T + bias, tiles as listed in SPARSE_LLM_MMA_TILES; split > 1 splits K over grid.z;
// cluster: reduce the split through distributed shared memory where the GPU and the grid allow it.
torch::Tensor spmm24_mma(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                         const c10::optional<torch::Tensor>& bias, int64_t rows_per_warp, int64_t tokens_per_block,
                         int64_t split, int64_t stages, int64_t warps, bool cluster) {
  check_operands("spmm24_mma", x, values, meta, bias);
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK(K % kChunk == 0, "spmm24_mma: K must be a multiple of ", kChunk, ", got ", K);
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
  // The pipelined kernel addresses its copies with 32-bit byte offsets from the start of each tensor.
  constexpr int64_t kOffsetLimit = int64_t{1} << 32;
  TORCH_CHECK(!is_pipelined(static_cast<int>(stages)) ||
                  ((x.size(0) - 1) * x.stride(0) * 2 + x.size(1) * 2 < kOffsetLimit &&
                   (values.size(0) - 1) * values.stride(0) * 2 + values.size(1) * 2 < kOffsetLimit &&
                   (meta.size(0) - 1) * meta.stride(0) * 2 + meta.size(1) * 2 < kOffsetLimit),
              "spmm24_mma: the pipelined kernel (stages >= 3) needs x, values and meta of less than 4 GiB each");
  TORCH_CHECK(split >= 1 && split <= K / chunk_columns(static_cast<int>(stages)), "spmm24_mma: split must be in [1, K/",
              chunk_columns(static_cast<int>(stages)), "] for stages=", stages, ", got ", split);
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
  SplitWorkspace workspace{x, stream};
  if (x.scalar_type() == at::kBFloat16) {
    dispatch<__nv_bfloat16>(x, values, meta, bias, y, workspace, rows, tokens, static_cast<int>(stages),
                            static_cast<int>(warps), static_cast<int>(split), cluster, stream);
  } else {
    dispatch<__half>(x, values, meta, bias, y, workspace, rows, tokens, static_cast<int>(stages),
                     static_cast<int>(warps), static_cast<int>(split), cluster, stream);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm24_mma", &spmm24_mma, "y = x @ W.T (+ bias) for a canonical 2:4 W on the sparse tensor cores",
        py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("bias"), py::arg("rows_per_warp"),
        py::arg("tokens_per_block"), py::arg("split"), py::arg("stages"), py::arg("warps"),
        py::arg("cluster") = false);
}
