// Host side shared by the sparse tensor-core extensions (spmm24_mma.cu, spmm24_wgmma.cu): the checks of the operands
// both take, and the global split-K reduction's fp32 partial tiles of one call and per-tile counters.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace {

// The checks both launchers make of x (M, K), the canonical 2:4 weight (values (N, K/2), meta (N, K/16) int16) and
// bias; `op` names the caller in the messages.
void check_operands(const char* op, const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                    const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.is_cuda() && values.is_cuda() && meta.is_cuda(), op, ": x, values and meta must be CUDA tensors");
  TORCH_CHECK(x.device() == values.device() && meta.device() == values.device(), op,
              ": x, values and meta must be on one device");
  TORCH_CHECK(x.dim() == 2 && values.dim() == 2 && meta.dim() == 2, op, ": x, values, meta must be 2-D");
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), op, ": x dtype ", x.scalar_type(),
              " does not match the weight dtype ", values.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
              ": float16 or bfloat16 only, got ", x.scalar_type());
  TORCH_CHECK(meta.scalar_type() == at::kShort, op, ": meta must be int16");
  const int64_t K = x.size(1), N = values.size(0);
  TORCH_CHECK(values.size(1) * 2 == K, op, ": x has ", K, " features, the weight expects ", values.size(1) * 2);
  TORCH_CHECK(meta.size(0) == N && meta.size(1) * 16 == K, op, ": meta shape does not match the weight");
  TORCH_CHECK(x.stride(1) == 1 && values.stride(1) == 1 && meta.stride(1) == 1, op, ": unit column strides");
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->device() == x.device() && bias->scalar_type() == x.scalar_type() &&
                    bias->dim() == 1 && bias->size(0) == N && bias->stride(0) == 1,
                op, ": bias must be a contiguous (N,) tensor of x's dtype on x's device");
  }
}

// Split-K tile counters, one zeroed buffer per (device, stream): every kernel leaves its counters at 0, and
// kernels of one stream run one after the other, so the buffer is reused without a reset. (Two products that
// run at the same time on two streams get two buffers.) A stream being captured into a CUDA graph cannot zero a
// buffer now (a memset would only run at replay), so each captured call gets counters of its own: a slice of a
// zeroed reserve of the device, made by a call outside any capture and never handed out twice (the kernel leaves the
// slice at 0, so it is 0 at every replay, whatever order graphs are replayed in). The call that makes a reserve waits
// for its zeros (once per reserve), so that no graph captured later on another stream can replay before them. Only
// when no reserve has room (the first split call of the process is captured, or kReserveInts are used up) does the
// call get a new zeroed buffer, zeroed by a memset node of the graph at every replay (one more node per call).
constexpr int64_t kReserveInts = int64_t{1} << 20;  // 4 MB per reserve

int* tile_counters(const torch::Tensor& like, cudaStream_t stream, int64_t tiles, torch::Tensor& per_call) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, torch::Tensor> buffers;
  // per device: every reserve made (graphs keep pointers into them) and the next free int of the last one
  static std::map<int, std::pair<std::vector<torch::Tensor>, int64_t>> reserves;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const std::lock_guard<std::mutex> lock(mutex);
  auto& [made, next] = reserves[like.get_device()];
  if (capture != cudaStreamCaptureStatusNone) {
    if (!made.empty() && next + tiles <= made.back().numel()) {
      int* slice = made.back().data_ptr<int>() + next;
      next += tiles;
      return slice;
    }
    per_call = torch::zeros({tiles}, like.options().dtype(at::kInt));
    return per_call.data_ptr<int>();
  }
  if (made.empty() || next > made.back().numel() / 2) {  // a fresh reserve for the captures to come
    made.push_back(torch::zeros({kReserveInts}, like.options().dtype(at::kInt)));
    next = 0;
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  const auto found = buffers.find({like.get_device(), stream});
  if (found != buffers.end() && found->second.numel() >= tiles) return found->second.data_ptr<int>();
  torch::Tensor& buf = buffers[{like.get_device(), stream}];
  buf = torch::zeros({std::max<int64_t>(tiles, 4096)}, like.options().dtype(at::kInt));
  return buf.data_ptr<int>();
}

// The launch configuration of a kernel: as thread-block clusters of `cluster` blocks where that is more than one
// block, with programmatic dependent launch where `programmatic` (its blocks may start while the previous kernel of
// the stream runs; the kernel waits for it with griddepcontrol.wait). `attributes` holds what the configuration
// points to.
cudaLaunchConfig_t launch_config(dim3 grid, dim3 block, int smem, cudaStream_t stream, dim3 cluster, bool programmatic,
                                 cudaLaunchAttribute (&attributes)[2]) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attributes;
  if (cluster.x * cluster.y * cluster.z > 1) {
    attributes[config.numAttrs] = {};
    attributes[config.numAttrs].id = cudaLaunchAttributeClusterDimension;
    attributes[config.numAttrs].val.clusterDim.x = cluster.x;
    attributes[config.numAttrs].val.clusterDim.y = cluster.y;
    attributes[config.numAttrs].val.clusterDim.z = cluster.z;
    ++config.numAttrs;
  }
  if (programmatic) {
    attributes[config.numAttrs] = {};
    attributes[config.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[config.numAttrs].val.programmaticStreamSerializationAllowed = 1;
    ++config.numAttrs;
  }
  return config;
}

// The global split-K workspace of one call (fp32 partial tiles and tile counters), made only when a launch takes
// the global path.
struct SplitWorkspace {
  const torch::Tensor& like;
  cudaStream_t stream;
  torch::Tensor partial, counters_per_call;

  std::pair<float*, int*> get(int64_t split, int64_t tiles, int64_t values_per_tile) {
    partial = torch::empty({split * tiles * values_per_tile}, like.options().dtype(at::kFloat));
    return {partial.data_ptr<float>(), tile_counters(like, stream, tiles, counters_per_call)};
  }
};

}  // namespace
