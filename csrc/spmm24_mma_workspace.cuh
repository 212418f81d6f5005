// Host side of the global split-K reduction, shared by the sparse tensor-core extensions (spmm24_mma.cu,
// spmm24_wgmma.cu): the fp32 partial tiles of one call and the per-tile counters the kernels count themselves in on.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

namespace {

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
