// Hopper's tensor-memory-access (TMA) copies for the warpgroup kernel (spmm24_wgmma.cu): the device side (mbarriers,
// cluster, box copies) from spmm24_wgmma_device.cuh; here, on the host, the 2-D tensor maps those copies read,
// encoded through the driver.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <torch/extension.h>

#include <cstdint>

#include "spmm24_wgmma_device.cuh"

namespace {

// cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult result{};
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &result));
    TORCH_CHECK(result == cudaDriverEntryPointSuccess && ptr != nullptr,
                "spmm24_wgmma: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A 2-D tensor map of a row-major (rows, cols) tensor with row stride `stride` elements, boxes of (box_cols,
// box_rows); out-of-bounds elements of a box arrive as zeros. `promote`: L2 fetches whole 256-byte lines.
CUtensorMap tensor_map(const torch::Tensor& t, CUtensorMapDataType type, int elem_bytes, int box_cols, int box_rows,
                       CUtensorMapSwizzle swizzle, bool promote = true) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(t.size(1)), static_cast<cuuint64_t>(t.size(0))};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(t.stride(0)) * elem_bytes};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult status =
      encode_fn()(&map, type, 2, t.data_ptr(), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  swizzle, promote ? CU_TENSOR_MAP_L2_PROMOTION_L2_256B : CU_TENSOR_MAP_L2_PROMOTION_NONE,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(status == CUDA_SUCCESS, "spmm24_wgmma: cuTensorMapEncodeTiled failed (", static_cast<int>(status),
              ") for a tensor of shape ", t.sizes(), " and strides ", t.strides());
  return map;
}

}  // namespace
