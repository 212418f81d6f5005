// Tensor-core issue-rate microbenchmark (bench/mma_peak.py): every warp runs `iters` rounds of NACC independent
// register-only MMAs, so neither memory nor dependencies limit the rate. One instruction per variant:
//   0: mma.sp.m16n8k32 bf16 (plain .sp)      1: mma.sp::ordered_metadata.m16n8k32 bf16
//   2: mma.m16n8k16 bf16 (dense)
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cstdint>

constexpr int NACC = 8;

template <int V>
__device__ __forceinline__ void one(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  if constexpr (V == 0) {
    asm volatile("mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  } else if constexpr (V == 1) {
#if defined(__CUDACC_VER_MAJOR__) && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5))
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
#endif
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

template <int V>
__global__ void peak_kernel(int iters, float* sink, uint32_t seed) {
  uint32_t a[4], b[4];
  for (int i = 0; i < 4; ++i) {
    a[i] = 0x3c003c00u ^ (seed * (threadIdx.x + i));  // runtime values: nothing folds away
    b[i] = 0x3c003c00u ^ (seed * (threadIdx.x + 7 * i));
  }
  const uint32_t e = 0x44444444u;  // indices (0, 1) in every group: valid for both metadata forms
  float d[NACC][4] = {};
  for (int it = 0; it < iters; ++it)
#pragma unroll
    for (int j = 0; j < NACC; ++j) one<V>(d[j], a, b, e);
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < NACC; ++j) s += d[j][0] + d[j][1] + d[j][2] + d[j][3];
  if (s == 1234.5f) sink[threadIdx.x] = s;
}

// Runs variant v with `blocks` blocks of `warps` warps; returns the kernel's milliseconds (CUDA events).
double run(int64_t v, int64_t blocks, int64_t warps, int64_t iters, torch::Tensor sink) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  auto launch = [&] {
    if (v == 0) peak_kernel<0><<<blocks, warps * 32, 0, stream>>>(iters, sink.data_ptr<float>(), 3u);
    else if (v == 1) peak_kernel<1><<<blocks, warps * 32, 0, stream>>>(iters, sink.data_ptr<float>(), 3u);
    else peak_kernel<2><<<blocks, warps * 32, 0, stream>>>(iters, sink.data_ptr<float>(), 3u);
  };
  launch();  // warm-up
  cudaEventRecord(start, stream);
  launch();
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ms;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
