// cuSPARSELt 2:4 linear layer: y = x @ W.T + b with W (N, K) compressed once.
//
// Layout (no transpose or copy on the hot path): cuSPARSELt's structured operand is A, so we compute
// yT = W . xT with W row-major (N, K) as A, x (M, K) row-major as B with opB = transpose, and y (M, N)
// row-major written as yT column-major (N, M). Bias goes in the epilogue (one bias value per row of yT).
//
// Per (device, N, K, M, dtype, bias pointer) we cache the descriptors, the plan and its workspace (from
// torch's caching allocator); per (device, N, K, M bucket, dtype) the fastest algorithm (config id, split-K and
// split-K mode), found by timing the candidates once, each launch with a cold L2 (as a layer of a model runs: the
// other layers' weights have evicted its own). After the first call of a shape, a call does one hash look-up and the
// cusparseLtMatmul launch on torch's current stream, so it can be captured in a CUDA graph. A plan first needed
// during a capture keeps the default algorithm (timing candidates synchronizes, which a capture forbids).
//
// M below 16 or not a multiple of 8 runs on a copy of x padded to a multiple of 8 rows (at least 16), as PyTorch pads
// for cuSPARSELt (DESIGN.md: M = 1 is refused); the output is the first M rows of the padded result, a view. M that
// is a multiple of 8 runs on x itself: the copy costs 4 bytes per element of x (1000x4096: ~5 us, 1000x28672: ~40 us
// on the H100), and 1000 rows ran faster than 1008 (4096x4096: 39 against 50 us, copy included; bench/NOTES.md,
// twelfth round).

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cusparseLt.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace {

#define SPARSE_LLM_CUSPARSELT_CHECK(expr)                                                                   \
  do {                                                                                                      \
    cusparseStatus_t status_ = (expr);                                                                      \
    TORCH_CHECK(status_ == CUSPARSE_STATUS_SUCCESS, "cuSPARSELt call ", #expr, " failed with status ",      \
                static_cast<int>(status_));                                                                 \
  } while (0)

constexpr int64_t kPadRows = 8;   // rows of x are padded to a multiple of this
constexpr int64_t kMinRows = 16;  // and to at least this many
constexpr uint32_t kAlignment = 16;
constexpr int kMaxConfigs = 32;  // algorithm ids timed per search
constexpr int kSearchRuns = 5;   // timed launches per candidate (the median counts), each after an L2 flush

cusparseLtHandle_t* handle_for(int device) {
  // One handle per device for the life of the process (cuSPARSELt handles are tied to a device).
  static std::mutex mutex;
  static std::unordered_map<int, std::unique_ptr<cusparseLtHandle_t>> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find(device);
  if (it == handles.end()) {
    auto handle = std::make_unique<cusparseLtHandle_t>();
    SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtInit(handle.get()));
    it = handles.emplace(device, std::move(handle)).first;
  }
  return it->second.get();
}

cudaDataType cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return CUDA_R_16F;
    case at::kBFloat16:
      return CUDA_R_16BF;
    default:
      TORCH_CHECK(false, "cuSPARSELt backend supports float16 and bfloat16, got ", t);
  }
}

void check_weight(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % kAlignment == 0, what, " must be 16-byte aligned");
}

// Structured (sparse) descriptor of W: N x K, row-major.
void init_sparse_descr(cusparseLtHandle_t* handle, cusparseLtMatDescriptor_t* descr, int64_t n, int64_t k,
                       cudaDataType type) {
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtStructuredDescriptorInit(handle, descr, n, k, k, kAlignment, type,
                                                                 CUSPARSE_ORDER_ROW,
                                                                 CUSPARSELT_SPARSITY_50_PERCENT));
}

struct AlgChoice {
  int config_id = 0;
  int split_k = 1;
  int mode = 0;  // cusparseLtSplitKMode_t; 0: not set (cuSPARSELt's own choice)
};

// One timed candidate of the last search (for benchmarks): the algorithm and its mean time.
struct Timed {
  AlgChoice alg;
  float ms;
};

struct Plan {
  cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t a{}, b{}, d{};
  cusparseLtMatmulDescriptor_t matmul{};
  cusparseLtMatmulAlgSelection_t selection{};
  cusparseLtMatmulPlan_t plan{};
  bool descriptors = false, planned = false;
  int64_t rows = 0;  // M actually given to cuSPARSELt (M, or M padded: padded_rows)
  at::Tensor workspace;
  AlgChoice alg;
  bool searched = false;

  ~Plan() {  // the order of PyTorch's own cuSPARSELt call: descriptors, then the plan
    if (descriptors) {
      cusparseLtMatDescriptorDestroy(&a);
      cusparseLtMatDescriptorDestroy(&b);
      cusparseLtMatDescriptorDestroy(&d);
    }
    if (planned) cusparseLtMatmulPlanDestroy(&plan);
  }
};

// Builds descriptors + matmul descriptor for `rows` columns of xT; returns the first failing status.
cusparseStatus_t try_describe(Plan& p, int64_t n, int64_t k, int64_t rows, cudaDataType type, const void* bias) {
  cusparseStatus_t s = cusparseLtStructuredDescriptorInit(p.handle, &p.a, n, k, k, kAlignment, type,
                                                          CUSPARSE_ORDER_ROW, CUSPARSELT_SPARSITY_50_PERCENT);
  if (s != CUSPARSE_STATUS_SUCCESS) return s;
  // x (M, K) row-major, used transposed: the same memory as xT column-major, in the form PyTorch's own
  // cuSPARSELt call uses (row-major B with opB = T).
  s = cusparseLtDenseDescriptorInit(p.handle, &p.b, rows, k, k, kAlignment, type, CUSPARSE_ORDER_ROW);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p.a);
    return s;
  }
  s = cusparseLtDenseDescriptorInit(p.handle, &p.d, n, rows, n, kAlignment, type, CUSPARSE_ORDER_COL);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p.a);
    cusparseLtMatDescriptorDestroy(&p.b);
    return s;
  }
  p.descriptors = true;
  s = cusparseLtMatmulDescriptorInit(p.handle, &p.matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                     CUSPARSE_OPERATION_TRANSPOSE, &p.a, &p.b, &p.d, &p.d, CUSPARSE_COMPUTE_32F);
  if (s != CUSPARSE_STATUS_SUCCESS) return s;
  if (bias != nullptr) {
    s = cusparseLtMatmulDescSetAttribute(p.handle, &p.matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias));
    if (s != CUSPARSE_STATUS_SUCCESS) return s;
  }
  s = cusparseLtMatmulAlgSelectionInit(p.handle, &p.selection, &p.matmul, CUSPARSELT_MATMUL_ALG_DEFAULT);
  if (s != CUSPARSE_STATUS_SUCCESS) return s;
  const int config_id = 0;
  return cusparseLtMatmulAlgSetAttribute(p.handle, &p.selection, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &config_id,
                                         sizeof(config_id));
}

cusparseStatus_t try_set_alg(Plan& p, const AlgChoice& alg) {
  cusparseStatus_t s = cusparseLtMatmulAlgSetAttribute(p.handle, &p.selection, CUSPARSELT_MATMUL_ALG_CONFIG_ID,
                                                       &alg.config_id, sizeof(int));
  if (s == CUSPARSE_STATUS_SUCCESS && alg.mode != 0) {
    const auto mode = static_cast<cusparseLtSplitKMode_t>(alg.mode);
    s = cusparseLtMatmulAlgSetAttribute(p.handle, &p.selection, CUSPARSELT_MATMUL_SPLIT_K_MODE, &mode, sizeof(mode));
  }
  if (s != CUSPARSE_STATUS_SUCCESS || alg.split_k <= 1) return s;  // split-K 1 is the default: leave it alone
  return cusparseLtMatmulAlgSetAttribute(p.handle, &p.selection, CUSPARSELT_MATMUL_SPLIT_K, &alg.split_k,
                                         sizeof(int));
}

AlgChoice get_alg(Plan& p) {
  AlgChoice alg;
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(p.handle, &p.selection, CUSPARSELT_MATMUL_ALG_CONFIG_ID,
                                                              &alg.config_id, sizeof(int)));
  SPARSE_LLM_CUSPARSELT_CHECK(
      cusparseLtMatmulAlgGetAttribute(p.handle, &p.selection, CUSPARSELT_MATMUL_SPLIT_K, &alg.split_k, sizeof(int)));
  return alg;
}

std::string search_mode();
bool debug_enabled();

// A complete plan (fresh descriptors, algorithm selection and plan) for one shape and algorithm; nullptr when
// cuSPARSELt refuses it and `must` is false. Every candidate of the search gets its own: in cuSPARSELt 0.8.0 on
// the H100, changing the algorithm of a selection whose plan had been destroyed, and cusparseLtMatmulSearch
// itself, crashed the process (bench/NOTES.md, layers).
std::unique_ptr<Plan> build_plan(cusparseLtHandle_t* handle, int64_t n, int64_t k, int64_t rows, cudaDataType type,
                                 const void* bias, const AlgChoice* alg, const at::Tensor& like, bool must) {
  auto p = std::make_unique<Plan>();
  p->handle = handle;
  p->rows = rows;
  cusparseStatus_t s = try_describe(*p, n, k, rows, type, bias);
  if (s == CUSPARSE_STATUS_SUCCESS && alg != nullptr) s = try_set_alg(*p, *alg);
  if (s == CUSPARSE_STATUS_SUCCESS) s = cusparseLtMatmulPlanInit(p->handle, &p->plan, &p->matmul, &p->selection);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    TORCH_CHECK(!must, "cuSPARSELt refused the plan for N=", n, " K=", k, " M=", rows, " (status ", int(s), ")");
    return nullptr;
  }
  p->planned = true;
  size_t workspace_size = 0;
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtMatmulGetWorkspace(p->handle, &p->plan, &workspace_size));
  p->workspace = at::empty({static_cast<int64_t>(std::max<size_t>(workspace_size, 1))},
                           like.options().dtype(at::kByte));
  p->alg = alg != nullptr ? *alg : get_alg(*p);
  return p;
}

// The algorithms timed for one config id. "ids": the id alone. "full": also split-K 2, 4, 8 (cuSPARSELt's mode
// choice and its explicit SPLITK mode), stream-K and data-parallel. Candidates cuSPARSELt refuses are skipped.
// The modes by value (cusparseLtSplitKMode_t of cuSPARSELt 0.8: 4 data-parallel, 5 split-K, 6 stream-K), so that
// a header without them still builds; a library that does not know one refuses the candidate.
constexpr int kModeDataParallel = 4, kModeSplitK = 5, kModeStreamK = 6;
std::vector<AlgChoice> candidates_for(int id, const std::string& mode) {
  std::vector<AlgChoice> out = {{id, 1, 0}};
  if (mode != "full") return out;
  for (int split : {2, 4, 8}) {
    out.push_back({id, split, 0});
    out.push_back({id, split, kModeSplitK});
  }
  out.push_back({id, 1, kModeStreamK});
  out.push_back({id, 1, kModeDataParallel});
  return out;
}

// Times the candidates of every algorithm id on the real buffers, each launch after a write of twice the L2 size
// (so the weight comes from DRAM, as in do_bench and in a model's forward); the fastest by median. All timings go to
// `timed`. Without the flush, back-to-back launches of a layer that fits in L2 ran from L2: on the H100 the best of
// 1024x4096 M = 512 took 18.9 us there and 25.1 us cold (bench/results/cusparselt_search_h100.json).
AlgChoice search_algorithm(const Plan& shape, int64_t n, int64_t k, cudaDataType type, const void* bias,
                           const void* a, const void* b, void* d, const at::Tensor& like, int* num_configs,
                           std::vector<Timed>* timed) {
  int max_id = 1;
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(
      shape.handle, &shape.selection, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id, sizeof(int)));
  *num_configs = max_id;
  const std::string mode = search_mode();
  const bool debug = debug_enabled();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor flush = at::empty({2 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->l2CacheSize)},
                               like.options().dtype(at::kByte));
  cudaEvent_t start, stop;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  const float alpha = 1.0f, beta = 0.0f;
  AlgChoice best;
  float best_ms = std::numeric_limits<float>::infinity();
  timed->clear();
  for (int id = 0; id < std::min(max_id, kMaxConfigs); ++id) {
    for (const AlgChoice& alg : candidates_for(id, mode)) {
      if (debug) {
        fprintf(stderr, "cusparselt search: rows %ld id %d/%d split %d mode %d\n", (long)shape.rows, id, max_id,
                alg.split_k, alg.mode);
      }
      auto candidate = build_plan(shape.handle, n, k, shape.rows, type, bias, &alg, like, false);
      if (!candidate) continue;
      auto launch = [&]() {
        return cusparseLtMatmul(candidate->handle, &candidate->plan, &alpha, a, b, &beta, d, d,
                                candidate->workspace.data_ptr(), &stream, 1);
      };
      if (launch() != CUSPARSE_STATUS_SUCCESS) continue;
      std::vector<float> runs;
      for (int r = 0; r < kSearchRuns; ++r) {
        flush.zero_();
        C10_CUDA_CHECK(cudaEventRecord(start, stream));
        const bool ok = launch() == CUSPARSE_STATUS_SUCCESS;
        C10_CUDA_CHECK(cudaEventRecord(stop, stream));
        C10_CUDA_CHECK(cudaEventSynchronize(stop));
        if (!ok) break;
        float ms = 0.0f;
        C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        runs.push_back(ms);
      }
      if (runs.size() < static_cast<size_t>(kSearchRuns)) continue;
      std::nth_element(runs.begin(), runs.begin() + kSearchRuns / 2, runs.end());
      const float ms = runs[kSearchRuns / 2];
      if (debug) fprintf(stderr, "cusparselt search: %.4f ms\n", ms);
      timed->push_back({alg, ms});
      if (ms < best_ms) {
        best_ms = ms;
        best = alg;
      }
    }
  }
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  TORCH_CHECK(best_ms < std::numeric_limits<float>::infinity(), "cuSPARSELt: no algorithm ran for this shape");
  return best;
}

struct PlanKey {
  int device;
  int64_t n, k, m;
  int dtype;
  uintptr_t bias;
  bool operator==(const PlanKey& o) const {
    return device == o.device && n == o.n && k == o.k && m == o.m && dtype == o.dtype && bias == o.bias;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t h = std::hash<int64_t>()(key.n);
    auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
    mix(std::hash<int64_t>()(key.k));
    mix(std::hash<int64_t>()(key.m));
    mix(std::hash<int>()(key.device));
    mix(std::hash<int>()(key.dtype));
    mix(std::hash<uintptr_t>()(key.bias));
    return h;
  }
};

int64_t padded_rows(int64_t m) { return std::max(kMinRows, (m + kPadRows - 1) / kPadRows * kPadRows); }

int64_t m_bucket(int64_t m) {
  int64_t b = 1;
  while (b < m) b <<= 1;
  return b;
}

struct Cache {
  std::mutex mutex;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
  std::unordered_map<PlanKey, AlgChoice, PlanKeyHash> algorithms;  // m = bucket, bias = 0
  int64_t searches = 0;
  int num_configs = 0;  // CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID seen by the last search
  std::vector<Timed> last_search;  // every candidate of the last search with its time
};

Cache& cache() {
  static Cache c;
  return c;
}

constexpr size_t kMaxPlans = 4096;

// SPARSE_LLM_CUSPARSELT_SEARCH: "0" keeps cuSPARSELt's default algorithm, "ids" (default) times the algorithm
// ids, "full" also their split-K and stream-K variants (candidates_for).
std::string search_mode() {
  const char* env = std::getenv("SPARSE_LLM_CUSPARSELT_SEARCH");
  return env == nullptr ? std::string("ids") : std::string(env);
}

bool search_enabled() { return search_mode() != "0"; }

bool debug_enabled() {
  const char* env = std::getenv("SPARSE_LLM_CUSPARSELT_DEBUG");
  return env != nullptr && std::string(env) == "1";
}

Plan* plan_for(const PlanKey& key, const at::Tensor& x, const at::Tensor& compressed, const void* bias,
               at::Tensor& out_for_search) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.plans.find(key);
  if (it != c.plans.end()) return it->second.get();
  if (c.plans.size() >= kMaxPlans) c.plans.clear();  // a bound, not an LRU: plans are cheap to rebuild

  cusparseLtHandle_t* handle = handle_for(key.device);
  const cudaDataType type = cuda_type(x.scalar_type());
  const int64_t rows = padded_rows(key.m);
  PlanKey alg_key{key.device, key.n, key.k, m_bucket(rows), key.dtype, 0};
  auto known = c.algorithms.find(alg_key);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  std::unique_ptr<Plan> plan;
  if (known != c.algorithms.end()) {
    plan = build_plan(handle, key.n, key.k, rows, type, bias, &known->second, x, true);
  } else if (capturing || !search_enabled()) {
    plan = build_plan(handle, key.n, key.k, rows, type, bias, nullptr, x, true);  // default algorithm
  } else {
    // The search needs real buffers of the plan's shape; x may be shorter than a padded plan.
    at::Tensor xs = x, ys = out_for_search;
    if (rows != key.m) {
      xs = at::zeros({rows, key.k}, x.options());
      ys = at::empty({rows, key.n}, x.options());
    }
    int num_configs = 0;
    AlgChoice best;
    {
      auto probe = build_plan(handle, key.n, key.k, rows, type, bias, nullptr, x, true);
      best = search_algorithm(*probe, key.n, key.k, type, bias, compressed.data_ptr(), xs.data_ptr(), ys.data_ptr(),
                              x, &num_configs, &c.last_search);
    }
    plan = build_plan(handle, key.n, key.k, rows, type, bias, &best, x, true);
    plan->searched = true;
    c.num_configs = num_configs;
    c.algorithms[alg_key] = best;
    c.searches += 1;
  }
  Plan* raw = plan.get();
  c.plans.emplace(key, std::move(plan));
  return raw;
}

}  // namespace

// Compress a dense (N, K) 2:4 weight; returns a flat tensor of the weight's dtype whose first N*K/2 elements are
// the kept values in row-major order (the rest is cuSPARSELt's own metadata).
at::Tensor compress(const at::Tensor& dense) {
  check_weight(dense, "dense 2:4 weight");
  TORCH_CHECK(dense.dim() == 2, "dense 2:4 weight must be 2-D (N, K), got ", dense.sizes());
  const cudaDataType type = cuda_type(dense.scalar_type());
  c10::cuda::CUDAGuard guard(dense.device());
  cusparseLtHandle_t* handle = handle_for(dense.get_device());
  cusparseLtMatDescriptor_t descr;
  init_sparse_descr(handle, &descr, dense.size(0), dense.size(1), type);
  size_t compressed_size = 0, buffer_size = 0;
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtSpMMACompressedSize2(handle, &descr, &compressed_size, &buffer_size));
  const int64_t elem = dense.element_size();
  const int64_t numel = (static_cast<int64_t>(compressed_size) + elem - 1) / elem;
  at::Tensor out = at::empty({numel}, dense.options());
  at::Tensor scratch = at::empty({static_cast<int64_t>(std::max<size_t>(buffer_size, 1))},
                                 dense.options().dtype(at::kByte));
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtSpMMACompress2(handle, &descr, 1, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                       dense.data_ptr(), out.data_ptr(), scratch.data_ptr(),
                                                       at::cuda::getCurrentCUDAStream()));
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtMatDescriptorDestroy(&descr));
  return out;
}

// y = x @ W.T (+ bias), x (M, K) contiguous, W compressed by `compress` from an (n, k) weight.
at::Tensor linear(const at::Tensor& x, const at::Tensor& compressed, const std::optional<at::Tensor>& bias,
                  int64_t n, int64_t k) {
  TORCH_CHECK(x.is_cuda() && compressed.is_cuda(), "cuSPARSELt linear needs CUDA tensors");
  TORCH_CHECK(x.device() == compressed.device(), "input on ", x.device(), " but weight on ", compressed.device());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, "input must be (M, ", k, "), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == compressed.scalar_type(), "input dtype ", x.scalar_type(), " != weight dtype ",
              compressed.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "input must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % kAlignment == 0, "input must be 16-byte aligned");
  check_weight(compressed, "compressed weight");
  const void* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == x.device() && bias->numel() == n && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type(),
                "bias must be a contiguous (", n, ",) tensor of the input's dtype and device");
    bias_ptr = bias->data_ptr();
  }
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
  PlanKey key{x.get_device(), n, k, m, static_cast<int>(x.scalar_type()), reinterpret_cast<uintptr_t>(bias_ptr)};
  Plan* plan = plan_for(key, x, compressed, bias_ptr, out);
  at::Tensor xs = x, ys = out;
  if (plan->rows != m) {
    xs = at::empty({plan->rows, k}, x.options());
    xs.narrow(0, 0, m).copy_(x);
    ys = at::empty({plan->rows, n}, x.options());
  }
  float alpha = 1.0f, beta = 0.0f;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtMatmul(plan->handle, &plan->plan, &alpha, compressed.data_ptr(), xs.data_ptr(),
                                               &beta, ys.data_ptr(), ys.data_ptr(), plan->workspace.data_ptr(),
                                               &stream, 1));
  return plan->rows != m ? ys.narrow(0, 0, m) : ys;
}

int64_t version() {
  int v = 0;
  SPARSE_LLM_CUSPARSELT_CHECK(cusparseLtGetVersion(handle_for(at::cuda::current_device()), &v));
  return v;
}

// (plans, algorithms, searches, algorithm ids of the last search) for tests and benchmarks.
std::tuple<int64_t, int64_t, int64_t, int64_t> cache_info() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {static_cast<int64_t>(c.plans.size()), static_cast<int64_t>(c.algorithms.size()), c.searches,
          static_cast<int64_t>(c.num_configs)};
}

// The algorithm (config id, split-K, split-K mode, rows given to cuSPARSELt) of the cached plan that `linear` would
// use for these arguments; (-1, -1, -1, -1) if none is cached yet.
std::tuple<int64_t, int64_t, int64_t, int64_t> plan_info(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                                int64_t n, int64_t k) {
  const void* bias_ptr = (bias.has_value() && bias->defined()) ? bias->data_ptr() : nullptr;
  PlanKey key{x.get_device(), n, k, x.size(0), static_cast<int>(x.scalar_type()),
              reinterpret_cast<uintptr_t>(bias_ptr)};
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.plans.find(key);
  if (it == c.plans.end()) return {-1, -1, -1, -1};
  const AlgChoice& alg = it->second->alg;
  return {alg.config_id, alg.split_k, alg.mode, it->second->rows};
}

// Every candidate of the last search: (config id, split-K, split-K mode, median ms of kSearchRuns cold launches).
std::vector<std::tuple<int64_t, int64_t, int64_t, double>> last_search() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  std::vector<std::tuple<int64_t, int64_t, int64_t, double>> out;
  for (const Timed& t : c.last_search) out.emplace_back(t.alg.config_id, t.alg.split_k, t.alg.mode, t.ms);
  return out;
}

void clear_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.plans.clear();
  c.algorithms.clear();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compress", &compress, "Compress a dense (N, K) 2:4 fp16/bf16 CUDA weight with cuSPARSELt");
  m.def("linear", &linear, "y = x @ W.T (+ bias) with a compressed 2:4 W", py::arg("x"), py::arg("compressed"),
        py::arg("bias"), py::arg("n"), py::arg("k"));
  m.def("version", &version, "cuSPARSELt version (major*1000 + minor*100 + patch)");
  m.def("cache_info", &cache_info, "(plans, algorithms, searches, algorithm ids of the last search)");
  m.def("plan_info", &plan_info, "(config id, split-K, split-K mode, rows) of the cached plan for these arguments",
        py::arg("x"), py::arg("bias"), py::arg("n"), py::arg("k"));
  m.def("last_search", &last_search, "(config id, split-K, split-K mode, ms) of every candidate of the last search");
  m.def("clear_cache", &clear_cache, "Drop all cached plans and searched algorithms");
}
