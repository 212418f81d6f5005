// 2:4 sparse x dense product on Hopper's warpgroup sparse MMA (wgmma.mma_async.sp, sm_90a only): y = x @ W.T + bias.
//
// The product is yT = W . xT: W is the sparse operand A (64 rows per warpgroup x 32 columns of K per instruction),
// x the dense operand B (32 columns of K x TOKENS tokens), the accumulator 64 rows x TOKENS tokens in fp32 registers.
// W is read in the package's canonical form, the same bytes as the mma.sp kernels (spmm24_mma.cu): `values`
// (N, K/2) row-major and natural `meta` (N, K/16) int16.
//
// A block owns 64 * CWG rows of W and TOKENS tokens, and walks its piece of K in chunks of 128 columns through an
// S-stage shared-memory ring, filled by the tensor-memory-access unit from three 2-D tensor maps (one request per
// operand and stage, completion counted on the stage's mbarrier):
//   values: 64 values (128 bytes) x 64 * CWG rows, 128-byte swizzle (the layout the instruction's descriptor reads);
//   meta:   8 words (16 bytes) x 64 * CWG rows, unswizzled;
//   x:      two boxes of 64 columns x min(M, TOKENS) tokens, 128-byte swizzle, never past the last row of x (a last
//           tile that would reach past M is moved back to end at M).
// Warpgroup 0 is the producer (one thread issues the copies); warpgroups 1 .. CWG are the consumers: each waits for
// a stage, builds its 4 metadata registers (one byte permute of two 16-byte metadata rows per 32-column step, as in
// the mma.sp kernels), issues 4 wgmma.sp (one per 32 columns) as one group, and releases the stage once the group
// has completed (with SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT=2 only after the next chunk's group is issued).
//
// Clusters (CT x CR blocks, each 1 or 2): the blocks of CT neighbouring token tiles and CR neighbouring row tiles
// form a thread-block cluster and share their copies (tensor-map multicast): with CT = 2 each of the two blocks of a
// row tile loads half of its W rows (values and metadata) into both, with CR = 2 each of the two blocks of a token
// tile loads one of the two x boxes into both. That halves W's or x's traffic from L2 (28672x8192, M = 4096: L2 at
// 92% of its peak; sharing took 0-16% off the time, so L2 is not all that bounds it: bench/NOTES.md, ninth round).
// A stage is refilled only once the consumers of every block that copies into it have released it.
//
// L2 policy of W (`w_evict_first`): W's copies can carry the evict-first hint, so that a weight read once per call
// replaces its own lines in L2 before anything else's (x, the previous kernels' outputs, still-dirty lines that would
// otherwise have to be written back first). x is always copied with the default policy: every row tile reads it.
// `w_promote` (default on) lets L2 fetch W in whole 256-byte lines: the other half of a row's line is the next
// chunk's, unless an evict-first line is pushed out before that chunk asks for it.
//
// Split-K (grid.z > 1): each block writes its fp32 partial tile to a workspace and counts itself in on the tile's
// counter; the last block of a tile adds the partials in split order (the same bits on every run), adds the bias and
// writes y.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "spmm24_mma_common.cuh"
#include "spmm24_mma_host.cuh"
#include "spmm24_wgmma_sp.cuh"
#include "spmm24_wgmma_layout.cuh"
#include "spmm24_wgmma_tma.cuh"

namespace {

// How a call is launched (set_launch_mode; 0 until set, sparse_mma applies SPARSE_LLM_PDL or its default, 3):
// kLaunchProgrammatic = programmatic dependent launch (the kernel's blocks may start, and set up, while the previous
// kernel of the stream runs; they wait for it before touching global memory); with kLaunchSelective only launches of
// tiles of one consumer warpgroup whose blocks fit on the SMs at once get it. Neither changes a bit of the result.
// H200 (bench/results/h200/wgmma_pdl_*.json, the stream of layer copies): every launch programmatic was 3-17% faster
// at M <= 16 on 6 of the 10 Llama shapes but 5% slower on 11008x4096 at M = 1 (1.3 waves) and 8-14% slower at
// M = 64-256 on most shapes, always with tiles of 2 or 4 consumer warpgroups; selective kept the gains and lost more
// than 1% in one row of 46 (wgmma_pdl_519ab6e.json).
constexpr int kLaunchProgrammatic = 1, kLaunchSelective = 2;
std::atomic<int> g_launch_mode{0};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SPARSE_LLM_WGMMA 1
#endif

template <typename T, int TOKENS, int CWG, int CT, int CR>
__global__ void __launch_bounds__(128 * (CWG + 1), 1) spmm24_wgmma_kernel(
    const __grid_constant__ CUtensorMap map_values, const __grid_constant__ CUtensorMap map_meta,
    const __grid_constant__ CUtensorMap map_x, const T* __restrict__ bias, T* __restrict__ y,
    float* __restrict__ partial, int* __restrict__ counters, int M, int N, int num_chunks, int chunks_per_split,
    int x_rows, int w_evict_first) {
#ifdef SPARSE_LLM_WGMMA
  using L = WgLayout<TOKENS, CWG>;
  constexpr int S = L::kStages;
  static_assert(CT == 1 || CT == 2, "W is shared by 1 or 2 blocks (half of the rows each)");
  static_assert(CR == 1 || CR == 2, "x is shared by 1 or 2 blocks (one 64-column box each)");
  constexpr bool kCluster = CT * CR > 1;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  const uint32_t full = base + S * L::kStage;  // full[s] at full + 8 s, empty[s] at full + 8 (S + s)
  const uint32_t empty = full + 8 * S;
  const int row0 = blockIdx.y * L::kRows;
  const int tok0 = blockIdx.x * TOKENS;  // the block's first token of y
  // The first token of x the block loads: a last tile that would reach past M is moved back to end at M (its tokens
  // before tok0 are the previous tile's, computed again and not written), since a tensor-map box that reaches past
  // the last row of x costs time (28672x8192, tile 128: M = 96 135 us, M = 128 116 us; wgmma_odd_m_h100.json).
  // With M < TOKENS the box is M rows (x_rows): the tile's other columns of x hold stale bytes and are not written.
  const int load0 = M >= TOKENS ? min(tok0, M - TOKENS) : 0;
  const int c_begin = blockIdx.z * chunks_per_split;
  const int c_end = min(c_begin + chunks_per_split, num_chunks);
  const int wg = threadIdx.x / 128;
  // Cluster position (cx, cy): rank cx + CT cy. This block's stage receives W from the blocks (0 .. CT-1, cy) and x
  // from (cx, 0 .. CR-1), which are also the blocks this block's producer copies into: a consumer warpgroup frees a
  // stage by arriving on the empty barrier of each of those CT + CR - 1 blocks (itself included).
  const uint32_t cx = CT > 1 ? cluster_x() : 0, cy = CR > 1 ? cluster_y() : 0;

  if (threadIdx.x == 0) {
    // the tensor maps' descriptors into the copy unit's cache while the barriers are set up
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_values)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_meta)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_x)) : "memory");
    for (int s = 0; s < S; ++s) {
      mbar_init(full + 8 * s, 1);
      mbar_init(empty + 8 * s, CWG * (CT + CR - 1));
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
  if constexpr (kCluster) {
    cluster_sync();  // the peers' barriers exist before anything is copied into them
  } else {
    __syncthreads();
  }
  // Programmatic dependent launch (launch(): a launch attribute, see kLaunchProgrammatic): this kernel's blocks may
  // start while the previous kernel of the stream still runs. Nothing above touched global memory; here every thread
  // waits until that kernel has finished and its writes are visible (x may be its output, y may reuse memory it
  // reads), then lets the next kernel's blocks start their own setup. Without the attribute both return at once.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  if constexpr (kAblate & 64) {
    if constexpr (kCluster) cluster_sync();  // as at the end: no block leaves before its peers are done with it
    return;
  }

  if (wg == 0) {  // producer
    if constexpr (CWG == 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    constexpr bool kCopyMeta = !(kAblate & 128) || kCluster;
    if (threadIdx.x == 0) {
      const uint64_t w_policy = w_evict_first ? evict_first_policy() : 0;
      int rotate = 0;  // kKRotate: the walk starts `rotate` chunks into the piece and wraps around
      if constexpr (kKRotate != 0) {
        const int row_tile = blockIdx.y / CR, row_tiles = gridDim.y / CR;
        const int token_tile = blockIdx.x / CT, token_tiles = gridDim.x / CT;
        const int b = kKRotate == 1 ? row_tile : kKRotate == 2 ? token_tile : row_tile * token_tiles + token_tile;
        const int count = kKRotate == 1 ? row_tiles : kKRotate == 2 ? token_tiles : row_tiles * token_tiles;
        rotate = static_cast<int>(static_cast<int64_t>(b) * max(c_end - c_begin, 0) / count);
      }
      for (int walk = c_begin; walk < c_end; ++walk) {
        const int k = walk - c_begin, s = k % S;
        int c = walk;  // the chunk this step copies
        if constexpr (kKRotate != 0) c = walk + rotate < c_end ? walk + rotate : walk + rotate - (c_end - c_begin);
        if (k >= S) mbar_wait(empty + 8 * s, ((k / S) - 1) & 1);
        const uint32_t stage = base + s * L::kStage, bar = full + 8 * s;
        if constexpr (kAblate & 2) {
          mbar_arrive(bar);
          continue;
        }
        constexpr bool kCopyW = !(kAblate & 8) || kCluster, kCopyX = !(kAblate & 16) || kCluster;
        mbar_expect_tx(bar, (kCopyW ? L::kValues + (kCopyMeta ? L::kMeta : 0) : 0) +
                                (kCopyX ? 2 * x_rows * kRowBytes : 0));
        if constexpr (!kCopyW) {
        } else if constexpr (CT == 1) {
          const uint32_t dst_meta = stage + L::kValues + L::kX;
          if (w_evict_first) {
            tma_load_hint(stage, &map_values, bar, c * (kChunk / 2), row0, w_policy);
            if constexpr (kCopyMeta) tma_load_hint(dst_meta, &map_meta, bar, c * (kChunk / 16), row0, w_policy);
          } else {
            tma_load(stage, &map_values, bar, c * (kChunk / 2), row0);
            if constexpr (kCopyMeta) tma_load(dst_meta, &map_meta, bar, c * (kChunk / 16), row0);
          }
        } else {  // rows cx * kRows / 2 .. of W into both token blocks (0, cy) and (1, cy)
          constexpr int kHalf = L::kRows / 2;
          const uint16_t mask = static_cast<uint16_t>(0x3u << (CT * cy));
          const uint32_t dst_values = stage + cx * kHalf * kRowBytes;
          const uint32_t dst_meta = stage + L::kValues + L::kX + cx * kHalf * kMetaRowBytes;
          const int r = row0 + cx * kHalf;
          if (w_evict_first) {
            tma_load_multicast_hint(dst_values, &map_values, bar, c * (kChunk / 2), r, mask, w_policy);
            tma_load_multicast_hint(dst_meta, &map_meta, bar, c * (kChunk / 16), r, mask, w_policy);
          } else {
            tma_load_multicast(dst_values, &map_values, bar, c * (kChunk / 2), r, mask);
            tma_load_multicast(dst_meta, &map_meta, bar, c * (kChunk / 16), r, mask);
          }
        }
        if constexpr (!kCopyX) {
        } else if constexpr (CR == 1) {
          tma_load(stage + L::kValues, &map_x, bar, c * kChunk, load0);
          tma_load(stage + L::kValues + L::kXBox, &map_x, bar, c * kChunk + kXBoxColumns, load0);
        } else {  // box cy of x into both row blocks (cx, 0) and (cx, 1)
          const uint16_t mask = static_cast<uint16_t>((1u | (1u << CT)) << cx);
          tma_load_multicast(stage + L::kValues + cy * L::kXBox, &map_x, bar, c * kChunk + cy * kXBoxColumns, load0,
                             mask);
        }
      }
    }
    if constexpr (kCluster) cluster_sync();  // see the consumers' end of the main loop
    return;
  }

  // Registers: 2 consumer warpgroups take what the producer gives back (their 256-token tile needs 128 accumulators
  // per thread); 4 consumer warpgroups (640 threads) have 96 per thread, enough for 128 tokens.
  if constexpr (CWG == 2) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int ctid = threadIdx.x - 128;  // consumer thread 0 .. 128 CWG - 1
  const int cw = wg - 1;               // consumer warpgroup
  const int warp = (ctid >> 5) & 3, lane = ctid & 31, g = lane >> 2, t = lane & 3;
  const uint32_t odd = (t & 1) ? 0x7632u : 0x5410u;  // thread 0 of a quad: columns 0-15 of a step, thread 1: 16-31
  const uint32_t meta_off = L::kValues + L::kX + kMetaRowBytes * (64 * cw + 16 * warp + g);
  float acc[TOKENS / 2];
#pragma unroll
  for (int i = 0; i < TOKENS / 2; ++i) acc[i] = 0.f;

  // Chunk k: waits for its stage, builds its metadata registers e, issues its 4 wgmma as one group; returns the stage.
  auto issue = [&](int k, uint32_t(&e)[4]) {
    const int s = k % S;
    mbar_wait(full + 8 * s, (k / S) & 1);
    const uint32_t stage = base + s * L::kStage;
    uint32_t m0[4], m8[4];
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(m0[0]), "=r"(m0[1]), "=r"(m0[2]), "=r"(m0[3])
                 : "r"(stage + meta_off));
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(m8[0]), "=r"(m8[1]), "=r"(m8[2]), "=r"(m8[3])
                 : "r"(stage + meta_off + 8 * kMetaRowBytes));
#pragma unroll
    for (int j = 0; j < 4; ++j) e[j] = __byte_perm(m0[j], m8[j], odd);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // step j: values bytes 32 j of the warpgroup's 64 rows, x columns 32 j .. 32 j + 31 (box j / 2, bytes 64 (j % 2))
      const uint64_t a = desc_sw128(stage + 64 * cw * kRowBytes + 32 * j);
      const uint64_t b = desc_sw128(stage + L::kValues + (j / 2) * L::kXBox + 64 * (j % 2));
      if constexpr (!(kAblate & 1)) wgmma_sp<T, TOKENS>(acc, a, b, e[j]);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    return s;
  };
  // After a chunk's group has completed: its stage goes back to the producer. wgmma.sp reads its metadata register
  // asynchronously, like its accumulators, and ptxas does not protect it (with the next chunk's metadata written
  // into the same registers while a group ran: wrong sums on the H100, wgmma_check_v1_h100.json): the empty asm
  // makes the compiler hold the chunk's registers unchanged until the group is known complete.
  auto retire = [&](int s, uint32_t(&e)[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(e[j])::"memory");
    if ((ctid & 127) == 0) {
      mbar_arrive(empty + 8 * s);
      if constexpr (CT == 2) mbar_arrive_remote(empty + 8 * s, (cx ^ 1) + CT * cy);
      if constexpr (CR == 2) mbar_arrive_remote(empty + 8 * s, cx + CT * (cy ^ 1));
    }
  };
  const int n = c_end - c_begin;
  if constexpr (kGroupsInFlight == 1) {
    uint32_t e[4];
    for (int k = 0; k < n; ++k) {
      const int s = issue(k, e);
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      retire(s, e);
    }
  } else {  // two register sets: even chunks in ea, odd chunks in eb; one group runs while the next is issued
    uint32_t ea[4], eb[4];
    int sa = 0, sb = 0;
    if (n > 0) sa = issue(0, ea);
    for (int k = 1; k < n; k += 2) {
      sb = issue(k, eb);
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
      retire(sa, ea);
      if (k + 1 == n) {
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        retire(sb, eb);
        break;
      }
      sa = issue(k + 1, ea);
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
      retire(sb, eb);
    }
    if (n % 2 == 1) {
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      retire(sa, ea);
    }
  }
#pragma unroll
  for (int i = 0; i < TOKENS / 2; ++i) asm volatile("" : "+f"(acc[i])::"memory");  // complete before the epilogue
  // No block of a cluster leaves while its peer may still arrive on its barriers or copy into its shared memory.
  if constexpr (kCluster) cluster_sync();

  // Accumulator i = 4 j + 2 h + q: row 16 warp + g + 8 h of the warpgroup's 64, token load0 + 8 j + 2 t + q.
  // (the producer warpgroup has left: the consumers meet on named barrier 1)
  // (4 consumer warpgroups have 96 registers per thread: no room to load several pieces at once)
  constexpr int kGroupMax = CWG == 4 ? 1 : 4;
  if constexpr (!(kAblate & 4)) {
    if (gridDim.z > 1 && !split_sum_global<TOKENS / 2, L::kConsumerThreads, 1, kGroupMax>(acc, partial, counters, ctid))
      return;
  }
  if constexpr (kAblate & 32) return;
  if constexpr (kStagedStore) {
    // The tile through the ring (every stage has been consumed, every copy into it has completed): rows of kPitch
    // bytes, one per token of the tile (from load0), the block's kRows values of W's rows contiguous; the 16 bytes
    // of padding put a warp's 4 tokens of a store on different banks.
    constexpr int kPitch = L::kRows * 2 + 16, kPieces = L::kRows * 2 / 16;  // 16-byte pieces per token
    static_assert(TOKENS * kPitch <= L::kStages * L::kStage, "the tile's y fits in the ring");
    uint8_t* tile = smem_raw + (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)));
    sync_threads<1, L::kConsumerThreads>();  // no consumer's wgmma still reads a stage
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = 64 * cw + 16 * warp + g + 8 * h;
      const float b_row = bias != nullptr ? to_float(bias[row0 + r]) : 0.f;
#pragma unroll
      for (int j = 0; j < TOKENS / 8; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q)
          *reinterpret_cast<T*>(tile + (8 * j + 2 * t + q) * kPitch + 2 * r) =
              from_float<T>(acc[4 * j + 2 * h + q] + b_row);
    }
    sync_threads<1, L::kConsumerThreads>();
    // tokens tok0 .. min(M, load0 + TOKENS) - 1 of y (those before tok0 are the previous tile's, a last tile moved
    // back; those from M on hold stale columns of x), 16 bytes per thread and step (N and row0: multiples of 64)
    const int first = tok0 - load0, count = min(M, load0 + TOKENS) - load0;
    for (int i = ctid; i < (count - first) * kPieces; i += L::kConsumerThreads) {
      const int tl = first + i / kPieces, piece = i % kPieces;
      *reinterpret_cast<uint4*>(y + static_cast<int64_t>(load0 + tl) * N + row0 + 8 * piece) =
          *reinterpret_cast<const uint4*>(tile + tl * kPitch + 16 * piece);
    }
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row0 + 64 * cw + 16 * warp + g + 8 * h;
    const float b_row = bias != nullptr ? to_float(bias[row]) : 0.f;
#pragma unroll
    for (int j = 0; j < TOKENS / 8; ++j)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int tok = load0 + 8 * j + 2 * t + q;
        if (tok >= tok0 && tok < M)  // tokens before tok0: the previous tile's (a last tile moved back)
          y[static_cast<int64_t>(tok) * N + row] = from_float<T>(acc[4 * j + 2 * h + q] + b_row);
      }
  }
#endif
}

template <typename T, int TOKENS, int CWG, int CT, int CR>
void launch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
            const c10::optional<torch::Tensor>& bias, torch::Tensor& y, SplitWorkspace& workspace, int split,
            int w_evict_first, bool w_promote, cudaStream_t stream) {
  using L = WgLayout<TOKENS, CWG>;
  const int M = x.size(0), K = x.size(1), N = values.size(0);
  const int num_chunks = K / kChunk;
  const int per_split = (num_chunks + split - 1) / split;
  // Token tiles rounded up to whole clusters: a last block past M computes the last tile again (its load0) for the
  // W it shares and writes nothing.
  const int token_tiles = ((M + TOKENS - 1) / TOKENS + CT - 1) / CT * CT;
  const dim3 grid(token_tiles, N / L::kRows, split);
  const auto kernel = spmm24_wgmma_kernel<T, TOKENS, CWG, CT, CR>;
  const int device = x.get_device();
  static std::atomic<uint64_t> configured{0};  // once per device and instantiation
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (!(configured.load() & bit)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kSmem));
    configured.fetch_or(bit);
  }
  const CUtensorMapDataType type =
      std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  // (with CT = 2 each block copies half of the tile's rows of W)
  const CUtensorMap map_values =
      tensor_map(values, type, 2, kRowBytes / 2, L::kRows / CT, CU_TENSOR_MAP_SWIZZLE_128B, w_promote);
  const CUtensorMap map_meta = tensor_map(meta, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, kMetaRowBytes / 2,
                                          L::kRows / CT, CU_TENSOR_MAP_SWIZZLE_NONE, w_promote);
  const int x_rows = std::min(M, TOKENS);  // boxes of x never reach past its last row (see the kernel)
  const CUtensorMap map_x = tensor_map(x, type, 2, kXBoxColumns, x_rows, CU_TENSOR_MAP_SWIZZLE_128B);
  float* partial = nullptr;
  int* counters = nullptr;
  if (split > 1) std::tie(partial, counters) = workspace.get(split, grid.x * grid.y, L::kConsumerThreads * TOKENS / 2);
  const T* bias_ptr = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  T* y_ptr = reinterpret_cast<T*>(y.data_ptr());
  const int mode = g_launch_mode.load(std::memory_order_relaxed);
  bool programmatic = (mode & kLaunchProgrammatic) != 0;
  if (programmatic && (mode & kLaunchSelective)) {  // one consumer warpgroup, every block on an SM at once
    programmatic = CWG == 1 && static_cast<int64_t>(grid.x) * grid.y * grid.z <=
                                             at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  }
  cudaLaunchAttribute attributes[2] = {};  // clusters of CT token tiles x CR row tiles
  const cudaLaunchConfig_t config =
      launch_config(grid, dim3(L::kThreads), L::kSmem, stream, dim3(CT, CR, 1), programmatic, attributes);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, map_values, map_meta, map_x, bias_ptr, y_ptr, partial, counters,
                                    M, N, num_chunks, per_split, x_rows, w_evict_first));
}

// The instantiated tiles: (tokens per block, consumer warpgroups of 64 rows each, cluster blocks along tokens sharing
// W, cluster blocks along rows sharing x). The H100 sweep of M = 128-4096 (wgmma_check_cluster_v3_h100.json) also
// timed 128 rows x 256 tokens with and without clusters, and 2 x 2 clusters: none was the fastest tile of a case
// that cuSPARSELt did not win by more, so they are not built; neither are 32- and 64-token tiles sharing x (5-30%
// slower than without a cluster on the layers of 4096-14336 rows at M = 32-256: wgmma_check_cluster_v4_h100.json).
// Nor are 96- and 192-token tiles (grids between the powers of two: 11008 rows are 43 tiles of 256, so at M = 256
// 128-token tiles fill 86 of the 132 SMs, 96-token ones 129): on the H200 they were the fastest tile only for
// 11008x4096 at M = 256-512 (8% and 15%), 3-30% slower elsewhere (h200/wgmma_variants_tiles_8bcf6c1.json).
// 64 tokens x 128 rows sharing x (64, 2, 1, 2) is the fastest tile of 1024x4096 at M = 1000-1024 on the H200: 8-9%
// faster than the other shipped tiles (20.2 -> 18.5 us, 0.91x -> 0.99x of cuBLAS;
// h200/wgmma_variants_extra_c08ed3a.json). The other tiles timed there did less well: the same tile sharing W (2, 1)
// was 3% faster than the shipped tiles on those two rows only, 128 tokens x 64 rows sharing x or W and 256 tokens x
// 128 rows (two 82 KB stages) tied them at best and were up to 2.3x slower.
#define SPARSE_LLM_WGMMA_TILES(X)                                                                     \
  X(8, 1, 1, 1) X(8, 2, 1, 1) X(16, 1, 1, 1) X(16, 2, 1, 1) X(32, 1, 1, 1) X(32, 2, 1, 1) X(64, 1, 1, 1) \
  X(64, 2, 1, 1) X(64, 4, 1, 1) X(128, 1, 1, 1) X(128, 2, 1, 1) X(128, 4, 1, 1) X(256, 1, 1, 1)         \
  X(64, 2, 1, 2) X(128, 2, 1, 2) X(128, 4, 1, 2) X(128, 4, 2, 1) SPARSE_LLM_WGMMA_EXTRA_TILES_LIST(X)

// Tiles built only to be measured (SPARSE_LLM_WGMMA_EXTRA_TILES=1: bench/wgmma_variants.py `extra`, which checks
// them against F.linear before timing; the package's WGMMA_TILES does not list them, so no dispatch reaches them).
// For 1024x4096 at M = 256-512 (0.97x of cuBLAS on the H200 with 64 x 64 tiles, split 2 and 1), where the 64 x 128
// tile sharing x won at M = 1024: 64 x 64 tiles sharing x (16 KB from L2 per block and chunk against 24) or W (20 KB).
// Measured 0-18% slower than without a cluster at M = 128-768 on 1024x4096 and 1024x8192
// (h200/wgmma_variants_extra64_9c92232.json), as sharing x was on the H100 at M = 256
// (wgmma_check_cluster_v4_h100.json). For the large layers at M = 33-128: 64 tokens x 128 rows and 32 tokens x 64
// rows sharing W (2, 1): 1-5% slower than the same tiles without a cluster on the H200
// (h200/wgmma_variants_extra_w_83e70d8.json; ncu there: sharing x made L2 carry more bytes, not fewer).
#ifndef SPARSE_LLM_WGMMA_EXTRA_TILES
#define SPARSE_LLM_WGMMA_EXTRA_TILES 0
#endif
#if SPARSE_LLM_WGMMA_EXTRA_TILES
#define SPARSE_LLM_WGMMA_EXTRA_TILES_LIST(X) \
  X(64, 1, 1, 2) X(64, 1, 2, 1) X(64, 2, 2, 1) X(32, 1, 2, 1)
#else
#define SPARSE_LLM_WGMMA_EXTRA_TILES_LIST(X)
#endif

bool tile_supported(int tokens, int warpgroups, int cluster_tokens, int cluster_rows) {
#define SPARSE_LLM_WGMMA_MATCH(T_, W_, CT_, CR_) \
  if (tokens == T_ && warpgroups == W_ && cluster_tokens == CT_ && cluster_rows == CR_) return true;
  SPARSE_LLM_WGMMA_TILES(SPARSE_LLM_WGMMA_MATCH)
#undef SPARSE_LLM_WGMMA_MATCH
  return false;
}

int stages_of(int tokens, int warpgroups) {
#define SPARSE_LLM_WGMMA_STAGES(T_, W_, CT_, CR_) \
  if (tokens == T_ && warpgroups == W_) return WgLayout<T_, W_>::kStages;
  SPARSE_LLM_WGMMA_TILES(SPARSE_LLM_WGMMA_STAGES)
#undef SPARSE_LLM_WGMMA_STAGES
  return 0;
}

template <typename T>
void dispatch(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
              const c10::optional<torch::Tensor>& bias, torch::Tensor& y, SplitWorkspace& workspace, int tokens,
              int warpgroups, int cluster_tokens, int cluster_rows, int split, int w_evict_first, bool w_promote,
              cudaStream_t stream) {
#define SPARSE_LLM_WGMMA_CASE(T_, W_, CT_, CR_)                                                                \
  if (tokens == T_ && warpgroups == W_ && cluster_tokens == CT_ && cluster_rows == CR_) {                        \
    launch<T, T_, W_, CT_, CR_>(x, values, meta, bias, y, workspace, split, w_evict_first, w_promote, stream); \
    return;                                                                                                    \
  }
  SPARSE_LLM_WGMMA_TILES(SPARSE_LLM_WGMMA_CASE)
#undef SPARSE_LLM_WGMMA_CASE
}

bool aligned16(const torch::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && (t.stride(0) * t.element_size()) % 16 == 0;
}

}  // namespace

// y (M, N) = x (M, K) @ W.T + bias with tiles of `tokens` tokens x 64 * `warpgroups` rows of W, clusters of
// `cluster_tokens` token tiles (sharing their copies of W) x `cluster_rows` row tiles (sharing x), each 1 or 2; split
// > 1 splits K; `w_evict_first` gives W's copies the evict-first L2 policy, `w_promote` = false copies W without
// L2's 256-byte promotion (neither changes a bit of the result).
torch::Tensor spmm24_wgmma(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                           const c10::optional<torch::Tensor>& bias, int64_t tokens, int64_t warpgroups,
                           int64_t cluster_tokens, int64_t cluster_rows, int64_t split, bool w_evict_first,
                           bool w_promote) {
  check_operands("spmm24_wgmma", x, values, meta, bias);
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK(K % kChunk == 0, "spmm24_wgmma: K must be a multiple of ", kChunk, ", got ", K);
  TORCH_CHECK(tile_supported(static_cast<int>(tokens), static_cast<int>(warpgroups), static_cast<int>(cluster_tokens),
                             static_cast<int>(cluster_rows)),
              "spmm24_wgmma: no kernel for tokens=", tokens, " warpgroups=", warpgroups, " cluster=", cluster_tokens,
              "x", cluster_rows);
  TORCH_CHECK(N % (64 * warpgroups * cluster_rows) == 0, "spmm24_wgmma: the weight's ", N,
              " rows are not a multiple of the cluster's ", 64 * warpgroups * cluster_rows);
  TORCH_CHECK(aligned16(x) && aligned16(values) && aligned16(meta),
              "spmm24_wgmma: the tensor maps need 16-byte aligned storage and row strides for x, values and meta");
  TORCH_CHECK(split >= 1 && split <= K / kChunk, "spmm24_wgmma: split must be in [1, K/", kChunk, "], got ", split);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto* props = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(props->major == 9 && props->minor == 0, "spmm24_wgmma: needs compute capability 9.0 (sm_90a), not ",
              props->major, ".", props->minor);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  torch::Tensor y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  SplitWorkspace workspace{x, stream};
  if (x.scalar_type() == at::kBFloat16) {
    dispatch<__nv_bfloat16>(x, values, meta, bias, y, workspace, static_cast<int>(tokens),
                            static_cast<int>(warpgroups), static_cast<int>(cluster_tokens),
                            static_cast<int>(cluster_rows), static_cast<int>(split), w_evict_first, w_promote,
                            stream);
  } else {
    dispatch<__half>(x, values, meta, bias, y, workspace, static_cast<int>(tokens), static_cast<int>(warpgroups),
                     static_cast<int>(cluster_tokens), static_cast<int>(cluster_rows), static_cast<int>(split),
                     w_evict_first, w_promote, stream);
  }
  return y;
}

// Sets how later calls launch (bits kLaunchProgrammatic, kLaunchSelective) and returns the previous mode; a mode
// outside [0, 3] changes nothing and returns -1 (sparse_mma.set_launch_mode checks it first and raises).
int64_t set_launch_mode(int64_t mode) {
  if (mode < 0 || mode > 3) return -1;
  return g_launch_mode.exchange(static_cast<int>(mode));
}

// Pipeline depth of a tile (what fits in shared memory), for reports.
int64_t wgmma_stages(int64_t tokens, int64_t warpgroups) {
  return stages_of(static_cast<int>(tokens), static_cast<int>(warpgroups));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm24_wgmma", &spmm24_wgmma, "y = x @ W.T (+ bias) for a canonical 2:4 W on Hopper's wgmma.sp",
        py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("bias"), py::arg("tokens"), py::arg("warpgroups"),
        py::arg("cluster_tokens"), py::arg("cluster_rows"), py::arg("split"), py::arg("w_evict_first") = false,
        py::arg("w_promote") = true);
  m.def("stages", &wgmma_stages, "shared-memory stages of a tile", py::arg("tokens"), py::arg("warpgroups"));
  m.def("set_launch_mode", &set_launch_mode,
        "how later calls launch: bit 1 programmatic dependent launch, bit 2 only for one-warpgroup one-wave launches; "
        "returns the previous mode (-1: not in [0, 3], nothing changed)",
        py::arg("mode"));
}
