"""Small-M backend on the sparse tensor cores: ``mma.sp`` through our CUDA kernels (``csrc/spmm24_mma.cu``), and on
an H100/H200 (compute capability 9.0) the warpgroup ``wgmma.mma_async.sp`` kernel (``csrc/spmm24_wgmma.cu``).

It reads the layer's canonical ``values`` (on the GPU a view of the head of cuSPARSELt's compressed buffer: one
copy of the weight) and natural ``meta`` directly: no conversion, no padding of M. A block stages its tokens of x
in shared memory, so the weight is streamed once per token tile (up to 128 tokens). Memory-bound at decode and
small-batch sizes, it is the dispatcher's choice for small M (the crossover to cuSPARSELt is measured,
``sparse_llm.tune``).

``spmm24_mma(x, values, meta, bias, config)`` computes ``x @ W.T + bias``; :class:`MmaConfig` is the tile
(rows of W per warp, tokens per block), the pipeline depth (1-2: W chunks in registers; 3+: the pipelined kernel,
W and x chunks in shared memory) and the split of K (split > 1: the last
block of each tile adds the fp32 partial sums in a fixed order inside the same kernel, so results are the same
on every run). ``MmaConfig.wgmma`` selects the warpgroup kernel: 64 rows of W per consumer warpgroup (``warps`` =
4 per warpgroup, ``rows`` = 16 per warp), ``tokens`` per block, W and x through a shared-memory ring filled by
tensor-map copies as deep as fits (``stages`` is 0: not a choice); ``wgmma_cluster`` (token tiles, row tiles), each
1 or 2, makes neighbouring blocks a thread-block cluster that shares its copies of W (two token tiles) and of x (two
row tiles): each block loads its part of a stage into all of them (tensor-map multicast).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import triton

from sparse_llm.backends._build import load_mma_extension, load_wgmma_extension, wgmma_status

DTYPES = (torch.float16, torch.bfloat16)
CHUNK = 256  # K columns per step of the kernel: K must be a multiple
PIPE_CHUNK = 128  # K columns per stage of the pipelined kernel (stages >= 3)
MAX_CLUSTER = 8  # most split pieces reduced in one thread-block cluster (kMaxClusterSplit in the kernel)
# (rows per warp, tokens per block, stages, warps) instantiated in csrc/spmm24_mma.cu (SPARSE_LLM_MMA_TILES)
TILES = frozenset(
    (16 * r, 8 * t, s, w)
    for r, t, s, w in ((1, 1, 1, 4), (1, 1, 2, 4), (2, 1, 1, 4), (2, 1, 2, 4), (4, 1, 1, 4), (1, 2, 1, 4), (2, 2, 1, 4),
                       (1, 4, 1, 4), (2, 4, 1, 4), (2, 4, 1, 8), (1, 8, 1, 4), (1, 8, 1, 8), (2, 8, 1, 8),
                       (1, 1, 4, 4), (2, 1, 4, 4), (2, 2, 4, 4), (1, 4, 3, 4), (2, 4, 3, 4), (1, 8, 3, 4), (2, 8, 3, 4),
                       (2, 8, 3, 8), (1, 16, 3, 8), (2, 16, 3, 8))
)  # fmt: skip

# (tokens per block, consumer warpgroups of 64 rows, cluster token tiles sharing W, cluster row tiles sharing x)
# instantiated in csrc/spmm24_wgmma.cu (SPARSE_LLM_WGMMA_TILES)
WGMMA_TILES = frozenset(
    (t, w, 1, 1) for t, w in ((8, 1), (8, 2), (16, 1), (16, 2), (32, 1), (32, 2), (64, 1), (64, 2), (64, 4), (128, 1),
                              (128, 2), (128, 4), (256, 1))
) | frozenset(((64, 2, 1, 2), (128, 2, 1, 2), (128, 4, 1, 2), (128, 4, 2, 1)))  # fmt: skip
WGMMA_CHUNK = 128  # K columns per stage of the wgmma kernel


@dataclass(frozen=True)
class MmaConfig:
    rows: int = 32  # rows of W per warp (16, 32, 64)
    tokens: int = 8  # tokens per block (8, 16, 32, 64)
    # chunks of K in flight: 1-2 in registers (2: the next one is loaded during the current mma); 3+ selects the
    # pipelined kernel, whose W and x chunks go through shared memory with cp.async, that many stages deep
    stages: int = 1
    split: int = 1  # pieces of K (blocks along grid.z)
    warps: int = 4  # warps per block (4 or 8): they share the block's staged tokens of x
    # split 2-8 on an sm_90 GPU: the pieces of a tile run as one thread-block cluster and add their partial tiles
    # through distributed shared memory instead of a global workspace (same bits; faster or slower by shape)
    cluster: bool = False
    # the warpgroup kernel (wgmma.mma_async.sp, sm_90a): rows 16, warps 4 per warpgroup, stages 0, cluster False
    wgmma: bool = False
    # warpgroup kernel: blocks of a thread-block cluster along tokens (sharing W) and along rows (sharing x)
    wgmma_cluster: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:  # a tuned table stores the pair as a JSON list
        object.__setattr__(self, "wgmma_cluster", tuple(self.wgmma_cluster))

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def warpgroups(self) -> int:
        return self.warps // 4

    @property
    def wgmma_tile(self) -> tuple[int, int, int, int]:
        """(tokens, warpgroups, cluster token tiles, cluster row tiles) of the warpgroup kernel: its key in
        :data:`WGMMA_TILES`."""
        return (self.tokens, self.warpgroups, *self.wgmma_cluster)


def wgmma_config(tokens: int, warpgroups: int, split: int = 1, cluster: tuple[int, int] = (1, 1)) -> MmaConfig:
    """The configuration of the warpgroup kernel with that tile (tokens per block, consumer warpgroups), cluster
    (token tiles sharing W, row tiles sharing x: each 1 or 2) and split."""
    if len(cluster) != 2 or any(c not in (1, 2) for c in cluster):
        raise ValueError(f"a warpgroup cluster is (token tiles, row tiles), each 1 or 2, got {cluster}")
    return MmaConfig(rows=16, tokens=tokens, stages=0, split=split, warps=4 * warpgroups, wgmma=True,
                     wgmma_cluster=tuple(cluster))  # fmt: skip


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=8)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=8)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def clusters_available(device: torch.device) -> bool:
    """Whether the cluster split-K can run: thread-block clusters need compute capability 9.0+."""
    return _capability(_index(device))[0] >= 9


def wgmma_usable(device: torch.device) -> bool:
    """Whether the warpgroup kernel runs here: an H100/H200 (compute capability 9.0) and its extension builds."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return _capability(_index(device)) == (9, 0) and wgmma_status()["available"]


def wgmma_split(m: int, n: int, k: int, tokens: int, warpgroups: int, device: torch.device) -> int:
    """Split K (powers of two, at least 4 chunks of 128 per piece) while the blocks stay under half the SMs: on the
    H100 only the 1024-row layers gained from a split (bench/results/wgmma_check_v2_h100.json: 4 pieces of
    1024x4096 at M = 1-16, none for 4096+ rows)."""
    sms = _num_sms(_index(device))
    blocks = triton.cdiv(m, tokens) * triton.cdiv(n, 64 * warpgroups)
    split = 1
    while blocks * split * 2 <= sms // 2 and k // (WGMMA_CHUNK * split * 2) >= 4:
        split *= 2
    return split


def wgmma_tiles_near(
    m: int, n: int, tiles: Iterable[tuple[int, int, int, int]] = WGMMA_TILES
) -> list[tuple[int, int, int, int]]:
    """The warpgroup tiles (tokens, warpgroups, cluster token tiles, cluster row tiles) of ``tiles`` with M's token
    count (a power of two, 8-256), half and double it (and a quarter from 129 tokens on: 64-token tiles were the
    fastest on the 1024-row layers at M = 256, wgmma_check_cluster_v3_h100.json), whose row clusters divide the
    weight's ``n``, clusters along tokens only where M fills two token tiles: the neighbourhood the tuner (and
    bench/wgmma_variants.py) times."""
    t0 = min(max(8, triton.next_power_of_2(m)), 256)
    sizes = (t0 // 4, t0 // 2, t0, 2 * t0) if t0 == 256 else (t0 // 2, t0, 2 * t0)
    return [(t, w, ct, cr) for t, w, ct, cr in sorted(tiles)
            if t in sizes and n % (64 * w * cr) == 0 and (ct == 1 or m > t)]  # fmt: skip


def wgmma_default_config(m: int, n: int, k: int, device: torch.device) -> MmaConfig:
    """The warpgroup kernel before tuning: all tokens up to 128 in one block (W streamed once), 128 rows per block
    on layers of 8192+ rows (64 below), the split of :func:`wgmma_split`. H100: bench/results/wgmma_check_v2_h100.json
    (1.2-1.7x of cuBLAS at M <= 128 on 1024x4096, 4096x4096 and 28672x8192)."""
    tokens = min(max(8, triton.next_power_of_2(m)), 128)
    warpgroups = 2 if n >= 8192 and n % 128 == 0 else 1
    return wgmma_config(tokens, warpgroups, wgmma_split(m, n, k, tokens, warpgroups, device))


# The warpgroup kernel streams W with the evict-first L2 policy and without L2's 256-byte promotion up to this M,
# where W (values + metadata) is at most W_EVICT_FIRST_MAX_L2 L2 caches. Median of the 10 Llama shapes, ours/dense at
# M = 1 after do_bench's memset: H100 1.50x -> 1.62x, H200 1.49x -> 1.57x; in a stream of layer copies H100 1.58x ->
# 1.64x, H200 1.52x -> 1.60x. It gained on weights up to 75 MB (1.5 L2 caches; 4096x14336 at M = 1 on the H100:
# 39.3 -> 33.5 us) and cost 3-18% after the memset on the 264 MB ones (28672x8192, 8192x28672); from M = 512 on it
# changed nothing outside +-2% (bench/results/wgmma_evict_h100_890d36a.json, h200/wgmma_evict_*.json, NOTES.md).
# After the memset most of the gain at decode is the memset's dirty lines no longer evicted by W's reads.
W_EVICT_FIRST_MAX_M = 256
W_EVICT_FIRST_MAX_L2 = 2


def wgmma_w_policy(m: int, w_bytes: int, l2_bytes: int) -> tuple[bool, bool]:
    """(evict-first, 256-byte promotion) for the L2 copies of a W of ``w_bytes`` (values + metadata) in a call of
    ``m`` tokens: evict-first without promotion while M <= :data:`W_EVICT_FIRST_MAX_M` and W is at most
    :data:`W_EVICT_FIRST_MAX_L2` times ``l2_bytes`` (its lines then make room before x's and the other kernels' do),
    else L2's defaults. The result is the same bits either way."""
    first = m <= W_EVICT_FIRST_MAX_M and w_bytes <= W_EVICT_FIRST_MAX_L2 * l2_bytes
    return first, not first


@functools.lru_cache(maxsize=8)
def _l2_bytes(index: int) -> int:
    return torch.cuda.get_device_properties(index).L2_cache_size


def wgmma_fits(n: int, k: int, config: MmaConfig) -> bool:
    """The warpgroup kernel's shape rules: whole 128-column chunks of K and whole clusters of row tiles of W."""
    return k % WGMMA_CHUNK == 0 and n % _wgmma_rows(config) == 0


def _wgmma_rows(config: MmaConfig) -> int:
    """Rows of W per cluster of the warpgroup kernel (two row tiles where ``wgmma_cluster`` shares x)."""
    return 64 * config.warpgroups * config.wgmma_cluster[1]


def auto_split(
    m: int, n: int, k: int, rows: int, tokens: int, device: torch.device, warps: int = 4, per_sm: int = 16
) -> int:
    """Split K (powers of two, at least 2 chunks of 256 per piece) until there are about ``per_sm`` warps per SM."""
    sms = _num_sms(_index(device))
    blocks = triton.cdiv(n, warps * rows) * triton.cdiv(m, tokens)
    split = 1
    while blocks * split * warps < per_sm * sms and split * 2 <= k // (2 * CHUNK):
        split *= 2
    return split


def default_config(m: int, n: int, k: int, device: torch.device) -> MmaConfig:
    """Before a tuning table exists: the warpgroup kernel where it runs (:func:`wgmma_default_config`), else the
    mma.sp kernels' :func:`mma_sp_default_config`."""
    if wgmma_usable(device):
        cfg = wgmma_default_config(m, n, k, device)
        if wgmma_fits(n, k, cfg):
            return cfg
    return mma_sp_default_config(m, n, k, device)


def mma_sp_default_config(m: int, n: int, k: int, device: torch.device) -> MmaConfig:
    """The mma.sp kernels before a tuning table exists: all of M's tokens in one block up to 64 (x is staged once per
    block). Up to 16 tokens the register kernel, 32 rows per warp on layers of 4096+ rows (16 below), K split to
    about 16 warps per SM; from 32 tokens on the pipelined kernel (32 rows per warp, 3 stages, 8 warps for 64
    tokens; the register kernel where x or the weight exceeds its 32-bit offsets, :func:`pipelined_fits`), split to
    about 8 warps per SM (its shared memory allows one or two blocks per SM). H100 sweep: mma_sweep_v7_h100.json.
    The split is reduced in a thread-block cluster on layers of fewer than 4096 rows up to 16 tokens (H100:
    1.07-1.13x faster there, slower on the larger layers; mma_variant_cluster_h100.json)."""
    tokens = min(8 * triton.next_power_of_2(triton.cdiv(m, 8)), 64)
    if tokens >= 32 and pipelined_fits(m, n, k):
        warps = 8 if tokens == 64 else 4
        return MmaConfig(32, tokens, 3, auto_split(m, n, k, 32, tokens, device, warps, per_sm=8), warps)
    rows = 32 if n >= 4096 or tokens >= 32 else 16
    warps = 8 if tokens == 64 else 4  # (register kernel, 64 tokens: the 8-warp tile is the instantiated one)
    split = auto_split(m, n, k, rows, tokens, device, warps)
    return MmaConfig(rows, tokens, 1, split, warps, cluster=n < 4096 and tokens <= 16 and 2 <= split <= MAX_CLUSTER)


def pipelined_fits(m: int, n: int, k: int) -> bool:
    """The pipelined kernel addresses x and the weight with 32-bit byte offsets: each must be under 4 GiB."""
    return 2 * m * k < 2**32 and n * k < 2**32


def shape_supported(n: int, k: int) -> bool:
    return k % CHUNK == 0 and n >= 1


def why_not(x: torch.Tensor, values: torch.Tensor) -> str | None:
    """None if the kernel can run this call, else the reason."""
    if not x.is_cuda:
        return "it needs a CUDA input"
    if x.dtype not in DTYPES or values.dtype != x.dtype:
        return f"it needs float16/bfloat16 input and weight of one dtype, got {x.dtype} and {values.dtype}"
    if not shape_supported(values.shape[0], 2 * values.shape[1]):
        return f"it needs in_features divisible by {CHUNK}, got {2 * values.shape[1]}"
    major, _ = torch.cuda.get_device_capability(x.device)
    if major < 8:
        return "sparse tensor cores need compute capability 8.0+"
    return None


# Launch modes of the warpgroup kernel (csrc/spmm24_wgmma.cu): bit 1 = programmatic dependent launch (a call's blocks
# start and set up while the previous kernel of the stream runs, then wait for it), bit 2 = only for launches of tiles
# of one consumer warpgroup whose blocks are all on the SMs at once. On the H200 (bench/results/h200/wgmma_pdl_*.json,
# a stream of layer copies, the 10 Llama shapes at M = 1-256) every launch programmatic was 3-17% faster at M <= 16 on
# 6 of the 10 shapes but 8-14% slower at M = 64-256 on most of them; the selective mode (3) kept the gains (up to 16%,
# 1024x4096 and 1024x8192 at M <= 128) and lost more than 1% in one row of 46 (1024x8192 at M = 256, 2.3%): the
# default. No mode changes a bit of any result, and CUDA-graph replay times are the same in every mode.
LAUNCH_MODES = (0, 1, 2, 3)
DEFAULT_LAUNCH_MODE = 3


def launch_mode_from_env(value: str | None) -> int | None:
    """The launch mode ``SPARSE_LLM_PDL`` asks for (None: unset or empty); a value that is not one of
    :data:`LAUNCH_MODES` raises ValueError."""
    if value is None or value.strip() == "":
        return None
    try:
        mode = int(value)
    except ValueError:
        mode = -1
    if mode not in LAUNCH_MODES:
        raise ValueError(f"SPARSE_LLM_PDL must be one of {LAUNCH_MODES} (0 off, 1 programmatic launch, 3 for "
                         f"one-warpgroup tiles in one wave only), got {value!r}")  # fmt: skip
    return mode


def set_launch_mode(mode: int) -> int:
    """How later calls of the warpgroup kernel launch (:data:`LAUNCH_MODES`, process-wide); returns the previous
    mode. Changes no bit of any result."""
    if mode not in LAUNCH_MODES:
        raise ValueError(f"launch mode must be one of {LAUNCH_MODES}, got {mode!r}")
    return _wgmma_extension().set_launch_mode(mode)


@functools.cache
def _wgmma_extension():
    """The warpgroup extension, with ``SPARSE_LLM_PDL``'s launch mode (else :data:`DEFAULT_LAUNCH_MODE`) applied
    once."""
    ext = load_wgmma_extension()
    mode = launch_mode_from_env(os.environ.get("SPARSE_LLM_PDL"))
    ext.set_launch_mode(DEFAULT_LAUNCH_MODE if mode is None else mode)
    return ext


def bound(values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None, config: MmaConfig, m: int):
    """The product as a function of a 2-D ``x`` of ``m`` rows alone, for a ``config`` that :func:`check_config`
    accepted: the extension's entry and every argument but x resolved once (what each eager call runs, and what
    SparseLinear keeps as its plan for calls like this one)."""
    # the kernels copy x in 4-byte pieces (16-byte in the pipelined one, tensor-map boxes of 16-byte aligned rows in
    # the warpgroup one): a fresh contiguous copy if rows are not aligned to that (contiguous() alone would keep a
    # contiguous but misaligned view). Here, on the real tensors: under torch.compile this runs inside the custom op.
    align = 16 if config.stages >= 3 or config.wgmma else 4
    if config.wgmma:
        fn = _wgmma_extension().spmm24_wgmma
        policy = wgmma_w_policy(m, values.nbytes + meta.nbytes, _l2_bytes(_index(values.device)))
        args = (*config.wgmma_tile, config.split, *policy)
    else:
        fn = load_mma_extension().spmm24_mma
        args = (config.rows, config.tokens, config.split, config.stages, config.warps, config.cluster)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.stride(-1) != 1 or x.stride(0) % (align // 2) or x.data_ptr() % align:
            x = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
        return fn(x, values, meta, bias, *args)

    return run


def _launch(x, values, meta, bias, config: MmaConfig) -> torch.Tensor:
    return bound(values, meta, bias, config, x.shape[0])(x)


@torch.library.custom_op("sparse_llm::spmm24_mma", mutates_args=())
def _spmm24_mma_op(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    rows: int,
    tokens: int,
    stages: int,
    split: int,
    warps: int,
    cluster: bool,
    wgmma: bool,
    cluster_tokens: int,
    cluster_rows: int,
) -> torch.Tensor:
    config = MmaConfig(rows, tokens, stages, split, warps, cluster, wgmma, (cluster_tokens, cluster_rows))
    return _launch(x, values, meta, bias, config)


@_spmm24_mma_op.register_fake
def _(x, values, meta, bias, rows, tokens, stages, split, warps, cluster, wgmma, cluster_tokens, cluster_rows):
    return x.new_empty(x.shape[0], values.shape[0])


def spmm24_mma(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: MmaConfig | None = None,
    check: bool = True,
) -> torch.Tensor:
    """``x @ W.T + bias`` for W = (values (N, K/2), meta (N, K/16) int16); x (..., K) fp16/bf16 on CUDA.
    ``check=False`` skips the device/dtype/shape checks (callers that did them: microseconds per call)."""
    reason = why_not(x, values) if check else None
    if reason is not None:
        raise ValueError(f"sparse tensor-core kernel cannot run: {reason}")
    if x.shape[-1] != 2 * values.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features (shape {tuple(x.shape)}), the weight expects "
                         f"{2 * values.shape[1]}")  # fmt: skip
    if bias is not None and (bias.shape != (values.shape[0],) or bias.dtype != x.dtype or bias.device != x.device):
        raise ValueError(f"bias must be ({values.shape[0]},) {x.dtype} on {x.device}, got {tuple(bias.shape)} "
                         f"{bias.dtype} on {bias.device}")  # fmt: skip
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    m, n = x2.shape[0], values.shape[0]
    config = config or default_config(m, n, x2.shape[1], x.device)
    check_config(m, n, x2.shape[1], config, x.device, check_device=check)
    out = run_checked(x2, values, meta, bias, config)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


def check_config(m: int, n: int, k: int, config: MmaConfig, device: torch.device, check_device: bool = True) -> None:
    """Raise ValueError unless ``config`` has a kernel that runs an (M, K) x (N, K) product (``check_device``: and the
    warpgroup kernel runs on ``device``)."""
    if config.wgmma:
        if config.wgmma_tile not in WGMMA_TILES or config.warps % 4 or config.stages or config.cluster:
            raise ValueError(f"no warpgroup kernel for {config}; tiles (tokens, warpgroups, cluster token tiles, "
                             f"cluster row tiles): {sorted(WGMMA_TILES)}")  # fmt: skip
        if not wgmma_fits(n, k, config):
            raise ValueError(f"the warpgroup kernel needs in_features divisible by {WGMMA_CHUNK} and out_features "
                             f"by {_wgmma_rows(config)}, got {k} and {n}")  # fmt: skip
        if check_device and not wgmma_usable(device):
            raise ValueError("the warpgroup kernel needs an H100/H200 (compute capability 9.0) and its extension")
    elif (config.rows, config.tokens, config.stages, config.warps) not in TILES or config.wgmma_cluster != (1, 1):
        raise ValueError(f"no sparse tensor-core kernel for {config}; tiles: {sorted(TILES)}")
    chunk = WGMMA_CHUNK if config.wgmma else PIPE_CHUNK if config.stages >= 3 else CHUNK
    if not 1 <= config.split <= k // chunk:
        raise ValueError(f"split must be 1 to {k // chunk} (chunks of {chunk} of the {k} input features) for {config}")


def run_checked(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None, config: MmaConfig
) -> torch.Tensor:
    """The product for a 2-D ``x`` and a ``config`` that :func:`check_config` accepted for this shape: no Python
    checks (the extension still checks the tensors, bias included), what SparseLinear runs at every call."""
    if x.shape[0] == 0:
        return x.new_empty(0, values.shape[0])
    if torch.compiler.is_compiling():
        return _spmm24_mma_op(x, values, meta, bias, config.rows, config.tokens, config.stages, config.split,
                              config.warps, config.cluster, config.wgmma, *config.wgmma_cluster)  # fmt: skip
    return _launch(x, values, meta, bias, config)  # eager: skip the custom-op dispatcher (microseconds at decode)
