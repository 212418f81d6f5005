// The warpgroup kernel's build-time knobs and the shared-memory layout of a tile (csrc/spmm24_wgmma.cu): chunk and
// row sizes and the ring's stages as fit in shared memory.
#pragma once

#include <algorithm>

namespace {

constexpr int kChunk = 128;              // K columns per stage
constexpr int kRowBytes = 128;           // values bytes per W row and stage (64 kept values)
constexpr int kMetaRowBytes = 16;        // metadata bytes per W row and stage (8 words of 4 groups)
constexpr int kXBoxColumns = 64;         // x columns per 128-byte swizzled box
constexpr int kSmemBudget = 220 * 1024;  // the ring's share of the 227 KB a block may have

// Build-time knobs, for measuring variants side by side (bench/wgmma_variants.py); the defaults are what ships.
// The deepest ring a tile gets (stages of small tiles are cheap: more bytes in flight per SM).
#ifndef SPARSE_LLM_WGMMA_MAX_STAGES
#define SPARSE_LLM_WGMMA_MAX_STAGES 8
#endif
// wgmma groups a consumer leaves in flight when it moves to the next chunk: 1 waits for each chunk's group before
// the next chunk's metadata is loaded; 2 keeps two metadata register sets, alternating between chunks, so one
// chunk's group runs while the next is issued.
#ifndef SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT
#define SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT 1
#endif
// Ablations, for finding what bounds a tile (bench/wgmma_ablate.py; the results are wrong with any bit set, the
// shipped build has none): 1 = no wgmma (the consumers wait for each stage and release it), 2 = no copies (the
// producer arrives on each stage's barrier without filling it), 4 = no split-K reduction (every piece stores y),
// 8 = no copies of W (values, metadata), 16 = no copies of x (8 and 16: not in tiles with clusters), 32 = no stores
// of y (the epilogue's), 64 = the block leaves right after its setup (launch, barriers, tensor-map prefetch: what a
// wave of blocks costs with no work), 128 = no copies of W's metadata (its values still copied; not in clusters):
// 6% of a stage's bytes but a third of its rows of tensor-map copies (16 bytes each).
#ifndef SPARSE_LLM_WGMMA_ABLATE
#define SPARSE_LLM_WGMMA_ABLATE 0
#endif
// y's stores: 1 (what ships) = through shared memory: the tile is written there token by token, then stored in
// whole 16-byte pieces of y's rows; 0 = each consumer thread stores its values, 2 bytes at a time, straight from its
// accumulators (every warp instruction writes 16 bytes in each of 4 rows of y). On the H200 the direct stores took
// 22 of the 116 us of 11008x4096 at M = 1024 with the 128 x 256 tile (the ablation without them, 32:
// h200/wgmma_ablate_store_f6e88e2.json); staged, that layer took 102.9 us, and the staged build was faster in 59 of
// 60 rows of bench/wgmma_variants.py (h200/wgmma_variants_staged_d9b7d94.json, `base` there is 0).
#ifndef SPARSE_LLM_WGMMA_STAGED_STORE
#define SPARSE_LLM_WGMMA_STAGED_STORE 1
#endif
// Where each block starts its walk along K (measure-only): 0 (what ships) = every block at its piece's first chunk,
// so all blocks of a wave ask for the same chunk of W and x at about the same time; otherwise block b starts at
// chunk b n / B of its piece's n chunks and wraps around, b and B counted over 1 = the row tiles (blocks reading the
// same x start apart), 2 = the token tiles (blocks reading the same W start apart), 3 = all blocks (clusters counted
// as one block: its blocks share their copies, so they walk together). The sums' order changes, not their terms.
#ifndef SPARSE_LLM_WGMMA_K_ROTATE
#define SPARSE_LLM_WGMMA_K_ROTATE 0
#endif
constexpr bool kStagedStore = SPARSE_LLM_WGMMA_STAGED_STORE != 0;
constexpr int kKRotate = SPARSE_LLM_WGMMA_K_ROTATE;
static_assert(kKRotate >= 0 && kKRotate <= 3, "SPARSE_LLM_WGMMA_K_ROTATE must be in [0, 3]");
constexpr int kAblate = SPARSE_LLM_WGMMA_ABLATE;
constexpr int kMaxStages = SPARSE_LLM_WGMMA_MAX_STAGES;
constexpr int kGroupsInFlight = SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT;
static_assert(kMaxStages >= 2 && kMaxStages <= 32, "SPARSE_LLM_WGMMA_MAX_STAGES must be in [2, 32]");
static_assert(kGroupsInFlight == 1 || kGroupsInFlight == 2, "SPARSE_LLM_WGMMA_GROUPS_IN_FLIGHT must be 1 or 2");

template <int TOKENS, int CWG>
struct WgLayout {
  static constexpr int kRows = 64 * CWG;
  static constexpr int kValues = kRows * kRowBytes;         // multiple of 1024: swizzle atoms stay aligned
  static constexpr int kXBox = TOKENS * 128;                // one 64-column box of x
  static constexpr int kX = 2 * kXBox;
  static constexpr int kMeta = kRows * kMetaRowBytes;
  static constexpr int kTxBytes = kValues + kX + kMeta;     // bytes the copies of one stage deliver (whole x boxes)
  static constexpr int kStage = (kTxBytes + 1023) / 1024 * 1024;
  static constexpr int kStages = std::min(kMaxStages, kSmemBudget / kStage);
  static constexpr int kSmem = kStages * kStage + 2 * 8 * kStages + 1024;  // + barriers + alignment slack
  static constexpr int kThreads = 128 * (CWG + 1);
  static constexpr int kConsumerThreads = 128 * CWG;
  static_assert(kStages >= 2, "a stage does not fit twice in shared memory");
};

}  // namespace
