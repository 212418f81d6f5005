// Warpgroup MMA issue-rate microbenchmark (bench/wgmma_peak.py): how close to the tensor cores' rate can
// wgmma.mma_async(.sp) run, and what bounds it? Every block (one per SM) holds CWG warpgroups; each issues groups of 4
// instructions over one 128-column chunk of K as the warpgroup kernel's consumers do (csrc/spmm24_wgmma.cu; B: one x
// tile of N tokens shared by all warpgroups, two 64-column boxes, 128-byte swizzle), DEPTH groups in flight, with no
// barriers and no metadata loads. Where A (W's values, 64 rows per warpgroup) comes from, and what else moves:
//   MODE 0: A in shared memory (the kernel's form);
//   MODE 1: A in registers, loaded once (the instruction's register-A form);
//   MODE 2: A in registers, loaded from global memory for every chunk (16-byte loads, an L2-resident buffer, one
//           chunk ahead);
//   MODE 3: MODE 2, and a producer warpgroup copies an x tile (N tokens x 256 bytes) per chunk into a shared-memory
//           scratch ring with the bulk-copy unit (the bytes a kernel with A in registers would still copy in);
//   MODE 4: MODE 0, and the producer copies what the kernel copies per chunk (x tile, 64 CWG rows of W values and
//           metadata: N x 256 + CWG x 64 x 144 bytes).
// The consumers never wait for the copies: the modes 3 and 4 add the copies' shared-memory writes to the same span.
// Dense reference: m64nNk16 over 64 columns per group, MODE 0. Output: one JSON line per configuration (SM cycles
// per block from clock64, the wall time from events).
//
// Standalone (no torch): nvcc -arch=sm_90a -O3 -std=c++17 -I csrc -I <dir of wgmma_peak_wrappers.cuh> wgmma_peak.cu
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "spmm24_wgmma_device.cuh"  // the kernel's mbarriers and operand descriptor
#include "spmm24_wgmma_sp.cuh"
// written by bench/wgmma_peak.py: wgmma_dense<N>(d, a, b), m64nNk16 bf16 from two descriptors, and
// wgmma_sp_ra<N>(d, a[4], b, e), m64nNk32 sparse bf16 with A in registers
#include "wgmma_peak_wrappers.cuh"

namespace {

constexpr int kModeSmemA = 0, kModeRegConst = 1, kModeRegLoad = 2, kModeRegLoadCopy = 3, kModeSmemACopy = 4;
constexpr int kLoadBufferBytes = 32 << 20;  // A's source in modes 2-3 (fits in L2)
constexpr int kCopyBufferBytes = 16 << 20;  // the copies' source in modes 3-4 (128 KB between two chunks' sources)

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// A's 16 registers of one chunk (64 bytes per thread; 8 KB per warpgroup), 16-byte loads.
__device__ __forceinline__ void load_a(uint32_t (&a)[16], const uint4* src) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const uint4 v = __ldcg(src + q * 128);
    a[4 * q] = v.x, a[4 * q + 1] = v.y, a[4 * q + 2] = v.z, a[4 * q + 3] = v.w;
  }
}
#endif

__host__ __device__ constexpr bool a_in_smem(int mode) { return mode == kModeSmemA || mode == kModeSmemACopy; }
__host__ __device__ constexpr bool copies(int mode) { return mode == kModeRegLoadCopy || mode == kModeSmemACopy; }
__host__ __device__ constexpr int copy_bytes(int mode, int n, int cwg) {
  return mode == kModeRegLoadCopy ? n * 256 : mode == kModeSmemACopy ? n * 256 + cwg * 64 * 144 : 0;
}
// shared memory: [A: CWG x 8 KB] [B: 2 boxes of N x 128 bytes] [copy ring: 2 x copy_bytes] [2 mbarriers]
__host__ __device__ constexpr int smem_bytes(int mode, int n, int cwg) {
  return 1024 + (a_in_smem(mode) ? cwg * 64 * 128 : 0) + 2 * n * 128 + 2 * copy_bytes(mode, n, cwg) + 16;
}

template <int N, int CWG, int DEPTH, bool SPARSE, int MODE>
__global__ void __launch_bounds__(128 * CWG + (copies(MODE) ? 128 : 0), 1)
    peak_kernel(int iters, long long* cycles, float* sink, const uint4* a_src, const uint8_t* copy_src) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  constexpr int kA = a_in_smem(MODE) ? CWG * 64 * 128 : 0, kB = 2 * N * 128, kCopy = copy_bytes(MODE, N, CWG);
  const uint32_t a0_all = base, b0 = base + kA, ring = b0 + kB, bars = ring + 2 * kCopy;
  // bf16 values of magnitude 0.5-1 with pseudo-random signs and mantissas (the power drawn depends on the bits)
  for (int i = threadIdx.x; i < (kA + kB) / 2; i += blockDim.x) {
    const uint32_t h = (i + 1) * 2654435761u;
    reinterpret_cast<uint16_t*>(gbase)[i] = static_cast<uint16_t>(0x3F00u | (h >> 24) | ((h >> 8) & 0x8000u));
  }
  if (threadIdx.x == 0) {
    mbar_init(bars, 1);
    mbar_init(bars + 8, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const int wg = threadIdx.x / 128;
  // Modes 3, 4: a producer warpgroup (its first thread issues the copies) gives registers to the consumers, within
  // what the block was given at launch (an increase past it would never return): 2 consumer warpgroups, 384 x 168
  // (128 x 40 + 256 x 232, as the kernel); 4, 640 x 96 (128 x 24 + 512 x 112; without it ptxas serializes the wgmma).
  constexpr bool kShareRegs = copies(MODE) && (CWG == 2 || CWG == 4);
  constexpr int kProducerRegs = CWG == 2 ? 40 : 24, kConsumerRegs = CWG == 2 ? 232 : 112;
  if (wg == CWG) {  // the producer (modes 3, 4): one chunk's copies after the other, two in flight
    if constexpr (copies(MODE)) {
      if constexpr (kShareRegs) asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
      if (threadIdx.x % 128 == 0) {
        for (int k = 0; k < iters; ++k) {
          const int s = k & 1;
          if (k >= 2) mbar_wait(bars + 8 * s, ((k >> 1) - 1) & 1);
          mbar_expect_tx(bars + 8 * s, kCopy);
          const uint8_t* src = copy_src + (static_cast<size_t>((blockIdx.x + k) % (kCopyBufferBytes >> 17)) << 17);
          for (int off = 0; off < kCopy; off += 16384) {
            const int bytes = kCopy - off < 16384 ? kCopy - off : 16384;
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                    ring + s * kCopy + off),
                "l"(src + off), "r"(bytes), "r"(bars + 8 * s)
                : "memory");
          }
        }
        for (int k = iters < 2 ? 0 : iters - 2; k < iters; ++k) mbar_wait(bars + 8 * (k & 1), (k >> 1) & 1);
      }
    }
    return;
  }
  if constexpr (kShareRegs) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
  const uint32_t a0 = a0_all + wg * 64 * 128;
  const uint32_t e = 0x44444444u;  // indices (0, 1) in every group of 4
  // A in registers: this warpgroup's 8 KB per chunk, cycling over 8 chunks of its own part of the buffer
  const uint4* a_base =
      a_src + (static_cast<size_t>(blockIdx.x * CWG + wg) * 8 * 8192 % kLoadBufferBytes) / 16 + threadIdx.x % 128;
  auto a_chunk = [&](int k) { return a_base + (k % 8) * 8192 / 16; };
  uint32_t ra[16], rb[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) ra[i] = rb[i] = 0x3F803F80u ^ (threadIdx.x * 0x00010001u * (i + 1));
  if constexpr (MODE == kModeRegLoad || MODE == kModeRegLoadCopy) load_a(ra, a_chunk(0));
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
  // one chunk: 4 instructions as one group; A from shared memory or from the register set r
  auto group = [&](const uint32_t(&r)[16]) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint64_t b = desc_sw128(b0 + (j / 2) * N * 128 + 64 * (j % 2));
      if constexpr (!SPARSE) {
        wgmma_dense<N>(acc, desc_sw128(a0 + 32 * j), desc_sw128(b0 + 32 * j));
      } else if constexpr (a_in_smem(MODE)) {
        wgmma_sp<__nv_bfloat16, N>(acc, desc_sw128(a0 + 32 * j), b, e);
      } else {
        wgmma_sp_ra<N>(acc, r[4 * j], r[4 * j + 1], r[4 * j + 2], r[4 * j + 3], b, e);
      }
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  };
  auto wait = [&](uint32_t(&r)[16]) {  // the group that read r has completed once this returns
    if constexpr (DEPTH == 1) {
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    } else {
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    }
    if constexpr (!a_in_smem(MODE)) {
#pragma unroll
      for (int i = 0; i < 16; ++i) asm volatile("" : "+r"(r[i])::"memory");
    }
  };
  constexpr bool kLoad = MODE == kModeRegLoad || MODE == kModeRegLoadCopy;
  const long long t0 = clock64();
  // Two register sets: chunk it reads ra, chunk it + 1 reads rb; a set is loaded again only once the group that read
  // it has completed (DEPTH 1: each group is waited for at once; DEPTH 2: the one before the last issued).
  for (int it = 0; it < iters; it += 2) {
    group(ra);
    wait(rb);
    if constexpr (kLoad) load_a(rb, a_chunk(it + 1));
    group(rb);
    wait(ra);
    if constexpr (kLoad) load_a(ra, a_chunk(it + 2));
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

struct Buffers {
  long long* cycles;
  float* sink;
  uint4* a_src;
  uint8_t* copy_src;
};

const char* kModeNames[] = {"A in shared memory", "A in registers, loaded once", "A in registers from global",
                            "A in registers from global + x copies", "A in shared memory + the kernel's copies"};

template <int N, int CWG, int DEPTH, bool SPARSE, int MODE>
void run(int sms, int iters, int reps, const Buffers& buf) {
  auto kernel = peak_kernel<N, CWG, DEPTH, SPARSE, MODE>;
  const int smem = smem_bytes(MODE, N, CWG), threads = 128 * CWG + (copies(MODE) ? 128 : 0);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  auto launch = [&] { kernel<<<sms, threads, smem>>>(iters, buf.cycles, buf.sink, buf.a_src, buf.copy_src); };
  launch();  // warm-up
  std::vector<double> ms, eff;
  std::vector<long long> host(2 * sms * CWG);
  const double flop_per_group = 4.0 * 2 * 64 * N * (SPARSE ? 32 : 16);  // dense-equivalent FLOPs
  const double peak_per_clock = SPARSE ? 8192.0 : 4096.0;                // per SM, bf16, dense-equivalent
  for (int r = 0; r < reps; ++r) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0.f;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
    cudaMemcpy(host.data(), buf.cycles, sizeof(long long) * host.size(), cudaMemcpyDeviceToHost);
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
  printf("{\"kind\": \"%s\", \"mode\": %d, \"mode_name\": \"%s\", \"tokens\": %d, \"warpgroups\": %d, "
         "\"groups_in_flight\": %d, \"copy_bytes_per_chunk\": %d, \"iters\": %d, \"ms\": %.4f, "
         "\"dense_equiv_tflops\": %.1f, \"share_of_peak_per_clock\": %.4f, \"error\": \"%s\"}\n",
         SPARSE ? "sparse m64nNk32" : "dense m64nNk16", MODE, kModeNames[MODE], N, CWG, DEPTH,
         copy_bytes(MODE, N, CWG), iters, med_ms, flop_per_group * iters * CWG * sms / (med_ms * 1e-3) / 1e12,
         eff[eff.size() / 2], cudaGetErrorString(err));
  fflush(stdout);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

// the modes of one sparse tile in the bit mask MODES (bit m: mode m). Only those that ptxas compiles without
// serializing the wgmma for want of registers (C7511/C7512): nvcc 13.0 does for A loaded from global with 4
// warpgroups, and with a producer warpgroup beside 256-token tiles.
template <int N, int CWG, int DEPTH, int MODES>
void modes(int sms, int iters, int reps, const Buffers& buf) {
  if constexpr (MODES & 1) run<N, CWG, DEPTH, true, kModeSmemA>(sms, iters, reps, buf);
  if constexpr (MODES & 2) run<N, CWG, DEPTH, true, kModeRegConst>(sms, iters, reps, buf);
  if constexpr (MODES & 4) run<N, CWG, DEPTH, true, kModeRegLoad>(sms, iters, reps, buf);
  if constexpr (MODES & 8) run<N, CWG, DEPTH, true, kModeRegLoadCopy>(sms, iters, reps, buf);
  if constexpr (MODES & 16) run<N, CWG, DEPTH, true, kModeSmemACopy>(sms, iters, reps, buf);
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? atoi(argv[1]) : 2048, reps = argc > 2 ? atoi(argv[2]) : 5;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const int sms = prop.multiProcessorCount;
  printf("{\"gpu\": \"%s\", \"sms\": %d}\n", prop.name, sms);
  Buffers buf;
  cudaMalloc(&buf.cycles, sizeof(long long) * 2 * sms * 4);
  cudaMalloc(&buf.sink, sizeof(float) * 1024);
  cudaMalloc(&buf.a_src, kLoadBufferBytes);
  cudaMalloc(&buf.copy_src, kCopyBufferBytes);
  cudaMemset(buf.a_src, 0x3F, kLoadBufferBytes);
  cudaMemset(buf.copy_src, 0x3F, kCopyBufferBytes);
  // dense reference first: the harness itself must reach the dense rate
  run<128, 2, 2, false, kModeSmemA>(sms, iters, reps, buf);
  run<256, 1, 2, false, kModeSmemA>(sms, iters, reps, buf);
  run<256, 2, 2, false, kModeSmemA>(sms, iters, reps, buf);
  // sparse, A in shared memory: every tile shape the kernel has, one and two groups in flight
  run<64, 1, 1, true, kModeSmemA>(sms, iters, reps, buf);
  run<64, 2, 2, true, kModeSmemA>(sms, iters, reps, buf);
  run<64, 4, 2, true, kModeSmemA>(sms, iters, reps, buf);
  run<128, 1, 1, true, kModeSmemA>(sms, iters, reps, buf);
  run<128, 1, 2, true, kModeSmemA>(sms, iters, reps, buf);
  run<256, 1, 1, true, kModeSmemA>(sms, iters, reps, buf);
  // where A comes from, and the copies beside it
  modes<128, 2, 2, 31>(sms, iters, reps, buf);
  modes<128, 4, 1, 1 | 2 | 16>(sms, iters, reps, buf);
  modes<128, 4, 2, 1 | 2 | 16>(sms, iters, reps, buf);
  modes<256, 1, 2, 1 | 2 | 4 | 16>(sms, iters, reps, buf);
  modes<256, 2, 2, 1 | 2 | 4>(sms, iters, reps, buf);
  return 0;
}
