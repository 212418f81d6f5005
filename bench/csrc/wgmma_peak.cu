// Warpgroup MMA issue-rate microbenchmark (bench/wgmma_peak.py): how close to the tensor cores' rate can
// wgmma.mma_async(.sp) run with both operands in shared memory, as the warpgroup kernel (csrc/spmm24_wgmma.cu) feeds
// them, but with no copies, no barriers and no metadata loads? Every block (one per SM) holds CWG warpgroups; each
// issues groups of 4 instructions over one 128-column chunk of K exactly as the kernel's consumers do (A: its own 64
// rows of 128-byte swizzled W values; B: one x tile of N tokens shared by all warpgroups, two 64-column boxes), and
// waits for the groups with DEPTH of them in flight. Dense reference: m64nNk16 over 64 columns per group.
// Output: one JSON line per configuration (SM cycles per block from clock64, and the wall time from events).
//
// Standalone (no torch): nvcc -arch=sm_90a -O3 -std=c++17 -I csrc -I <dir of wgmma_dense.cuh> wgmma_peak.cu
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "spmm24_wgmma_sp.cuh"
#include "wgmma_dense.cuh"  // written by bench/wgmma_peak.py: wgmma_dense<N>(d, a, b), m64nNk16 bf16

namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// K-major operand in 128-byte swizzled rows, 8-row groups 1024 bytes apart (the kernel's descriptor).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
#endif

template <int N>
constexpr int smem_bytes(int cwg) {
  return 1024 + cwg * 64 * 128 + 2 * N * 128;
}

template <int N, int CWG, int DEPTH, bool SPARSE>
__global__ void __launch_bounds__(128 * CWG, 1) peak_kernel(int iters, long long* cycles, float* sink) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)));
  const int bytes = CWG * 64 * 128 + 2 * N * 128;
  // bf16 values of magnitude 0.5-1 with pseudo-random signs and mantissas (the power drawn depends on the bits)
  for (int i = threadIdx.x; i < bytes / 2; i += blockDim.x) {
    const uint32_t h = (i + 1) * 2654435761u;
    reinterpret_cast<uint16_t*>(gbase)[i] = static_cast<uint16_t>(0x3F00u | (h >> 24) | ((h >> 8) & 0x8000u));
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const int wg = threadIdx.x / 128;
  const uint32_t a0 = base + wg * 64 * 128, b0 = base + CWG * 64 * 128;
  const uint32_t e = 0x44444444u;  // indices (0, 1) in every group of 4
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
  const long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if constexpr (SPARSE) {
        wgmma_sp<__nv_bfloat16, N>(acc, desc_sw128(a0 + 32 * j), desc_sw128(b0 + (j / 2) * N * 128 + 64 * (j % 2)),
                                   e);
      } else {
        wgmma_dense<N>(acc, desc_sw128(a0 + 32 * j), desc_sw128(b0 + 32 * j));
      }
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    if constexpr (DEPTH == 1) {
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    } else {
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    }
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
  for (int i = 0; i < N / 2; ++i) asm volatile("" : "+f"(acc[i])::"memory");
  const long long t1 = clock64();
  if (threadIdx.x % 128 == 0) {
    cycles[2 * (blockIdx.x * CWG + wg)] = t0;
    cycles[2 * (blockIdx.x * CWG + wg) + 1] = t1;
  }
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s += acc[i];
  if (s == 1234.5f) sink[threadIdx.x] = s;
#endif
}

template <int N, int CWG, int DEPTH, bool SPARSE>
void run(int sms, int iters, int reps) {
  auto kernel = peak_kernel<N, CWG, DEPTH, SPARSE>;
  const int smem = smem_bytes<N>(CWG);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  long long* cycles;
  float* sink;
  cudaMalloc(&cycles, sizeof(long long) * 2 * sms * CWG);
  cudaMalloc(&sink, sizeof(float) * 1024);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  kernel<<<sms, 128 * CWG, smem>>>(iters, cycles, sink);  // warm-up
  std::vector<double> ms, eff;
  std::vector<long long> host(2 * sms * CWG);
  const double flop_per_group = 4.0 * 2 * 64 * N * (SPARSE ? 32 : 16);  // dense-equivalent FLOPs
  const double peak_per_clock = SPARSE ? 8192.0 : 4096.0;                // per SM, bf16, dense-equivalent
  for (int r = 0; r < reps; ++r) {
    cudaEventRecord(start);
    kernel<<<sms, 128 * CWG, smem>>>(iters, cycles, sink);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0.f;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
    cudaMemcpy(host.data(), cycles, sizeof(long long) * host.size(), cudaMemcpyDeviceToHost);
    std::vector<double> per_block;
    for (int b = 0; b < sms; ++b) {
      long long lo = host[2 * b * CWG], hi = host[2 * b * CWG + 1];
      for (int w = 1; w < CWG; ++w) {
        lo = std::min(lo, host[2 * (b * CWG + w)]);
        hi = std::max(hi, host[2 * (b * CWG + w) + 1]);
      }
      per_block.push_back(flop_per_group * iters * CWG / double(hi - lo) / peak_per_clock);
    }
    std::sort(per_block.begin(), per_block.end());
    eff.push_back(per_block[per_block.size() / 2]);
  }
  std::sort(ms.begin(), ms.end());
  std::sort(eff.begin(), eff.end());
  const cudaError_t err = cudaGetLastError();
  const double med_ms = ms[ms.size() / 2];
  printf("{\"kind\": \"%s\", \"tokens\": %d, \"warpgroups\": %d, \"groups_in_flight\": %d, \"iters\": %d, "
         "\"ms\": %.4f, \"dense_equiv_tflops\": %.1f, \"share_of_peak_per_clock\": %.4f, \"error\": \"%s\"}\n",
         SPARSE ? "sparse m64nNk32" : "dense m64nNk16", N, CWG, DEPTH, iters, med_ms,
         flop_per_group * iters * CWG * sms / (med_ms * 1e-3) / 1e12, eff[eff.size() / 2], cudaGetErrorString(err));
  fflush(stdout);
  cudaFree(cycles);
  cudaFree(sink);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

template <int N, int CWG>
void both_depths(int sms, int iters, int reps) {
  run<N, CWG, 1, true>(sms, iters, reps);
  run<N, CWG, 2, true>(sms, iters, reps);
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? atoi(argv[1]) : 2048, reps = argc > 2 ? atoi(argv[2]) : 5;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const int sms = prop.multiProcessorCount;
  printf("{\"gpu\": \"%s\", \"sms\": %d}\n", prop.name, sms);
  // sparse: every tile shape the kernel has (tokens 64-256; 4 warpgroups only up to 128 tokens: registers)
  both_depths<64, 1>(sms, iters, reps);
  both_depths<64, 2>(sms, iters, reps);
  both_depths<64, 4>(sms, iters, reps);
  both_depths<128, 1>(sms, iters, reps);
  both_depths<128, 2>(sms, iters, reps);
  both_depths<128, 3>(sms, iters, reps);
  both_depths<128, 4>(sms, iters, reps);
  both_depths<256, 1>(sms, iters, reps);
  both_depths<256, 2>(sms, iters, reps);
  both_depths<256, 3>(sms, iters, reps);
  // dense reference: the harness itself must reach the dense rate
  run<128, 2, 2, false>(sms, iters, reps);
  run<256, 1, 2, false>(sms, iters, reps);
  run<256, 2, 2, false>(sms, iters, reps);
  return 0;
}
