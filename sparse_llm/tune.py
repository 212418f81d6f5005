"""Which GPU backend runs which M, measured per GPU and layer shape.

``tune_shape`` times, for M in powers of two, a few launch configurations of the Triton kernels and of the sparse
tensor-core kernel, and the cuSPARSELt extension, on a random 2:4 weight of the layer's shape; it keeps the
fastest configuration of each kernel per M, the fastest backend per M (``backends``) and the Triton/cuSPARSELt
crossover. ``tune`` does this for a list of shapes and merges the entries into ``crossover.json`` in the user
cache dir (``sparse_llm.cache.cache_dir``), keyed by GPU name, shape and dtype. The dispatcher reads the file
through :func:`choose_backend`, :func:`small_config` and :func:`mma_config`. A shape the user has not tuned takes the
entry measured for its GPU and shape in the tables shipped with the package (:func:`shipped_table`: the Llama
shapes on an H100 80GB HBM3 and an H200, copies of ``bench/results``' tables; ``SPARSE_LLM_SHIPPED_TABLES=0`` leaves
them out); without either it uses the defaults (:data:`DEFAULT_MMA_MAX`, :data:`DEFAULT_CROSSOVER`).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import warnings
from importlib import resources
from pathlib import Path

import torch
import triton

from sparse_llm.backends._build import ExtensionUnavailable
from sparse_llm.backends.triton_small import SmallConfig, default_config, spmm24_small
from sparse_llm.cache import cache_dir

CACHE_FILE = "crossover.json"
# Before a shape is tuned: Triton up to here, cuSPARSELt above (first H100 run: cuSPARSELt won from M = 4-8 on).
DEFAULT_CROSSOVER = 4
# 512-2048: the warpgroup kernel beat cuSPARSELt on the 1024-row layers there (H100, wgmma_check_v2_h100.json:
# 1024x4096 M = 1024 0.85x of cuBLAS against 0.76x; wgmma_check_cluster_v3_h100.json: M = 2048 1.06x against 0.90-0.93x
# with x shared by two row tiles); above, cuSPARSELt won on every shape measured (H100,
# retune_large_m_h100_7cfd019.json: at M = 4096-16384 our best tile took 1.00-1.20x cuSPARSELt's time on 1024x4096 and
# 1024x8192, 1.15-1.39x on 4096x4096; `sparse-llm tune --ms 4096` measures larger buckets where wanted).
TUNE_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# The mma.sp kernels are timed up to here (they lost to cuBLAS from M = 64 on in the H100 sweep,
# bench/results/mma_sweep_v5_h100.json, but could still beat the other two backends); the warpgroup kernel at every
# tuned M.
MMA_TUNE_MAX_M = 256


def cache_path() -> Path:
    """Where the tuned table lives: ``<cache dir>/crossover.json``."""
    return cache_dir() / CACHE_FILE


def m_bucket(m: int) -> int:
    """The tuned M that stands for ``m``: the next power of two."""
    return triton.next_power_of_2(max(int(m), 1))


def check_ms(ms) -> tuple[int, ...]:
    """The token counts to tune, sorted and each once; ValueError unless every one is a power of two of 1 or more: a
    call's M is looked up by its bucket (:func:`m_bucket`), so a table entry for M = 3000 would never be read."""
    ms = tuple(sorted({int(m) for m in ms}))
    if not ms:
        raise ValueError("no token count to tune: give at least one M")
    bad = [m for m in ms if m < 1 or m != m_bucket(m)]
    if bad:
        hint = ", ".join(f"{m} -> {m_bucket(m)}" for m in bad if m >= 1)
        raise ValueError(f"token counts to tune must be powers of two of 1 or more (a call of M tokens uses the tuned "
                         f"entry of the next power of two), got {bad}" + (f"; measure {hint} instead" if hint else ""))
    return ms


def gpu_name(device: torch.device | str | None = None) -> str:
    return torch.cuda.get_device_name(device)


def entry_key(gpu: str, n: int, k: int, dtype: torch.dtype) -> str:
    return f"{gpu}|{n}x{k}|{str(dtype).removeprefix('torch.')}"


@functools.cache
def _table(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def load_table(path: Path | None = None) -> dict:
    """The tuned entries (empty if nothing was tuned yet or the file is unreadable)."""
    return _table(str(path or cache_path()))


# The tables measured for this repository (bench/results/crossover_h100.json, bench/results/h200/crossover_h200.json),
# shipped in sparse_llm/tables.
SHIPPED_TABLES = ("crossover_h100.json", "crossover_h200.json")


def keyed(data: dict | list) -> dict:
    """A table's entries keyed as the cache file holds them, from the cache file's form or a list of entries (as
    ``sparse-llm tune`` returns them and ``bench/results`` commits them)."""
    entries = data.values() if isinstance(data, dict) else data
    return {entry_key(e["gpu"], e["n"], e["k"], getattr(torch, e["dtype"])): e for e in entries}


@functools.cache
def _shipped() -> dict:
    table = {}
    for name in SHIPPED_TABLES:
        try:
            table.update(keyed(json.loads((resources.files("sparse_llm") / "tables" / name).read_text())))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # only speed depends on it
            warnings.warn(f"sparse_llm: the shipped tuning table {name} is unreadable ({err}); shapes not tuned with "
                          "`sparse-llm tune` run their untuned defaults", stacklevel=2)  # fmt: skip
    return table


def shipped_table() -> dict:
    """The entries shipped with the package, keyed as the cache file (empty with ``SPARSE_LLM_SHIPPED_TABLES=0``)."""
    return {} if os.environ.get("SPARSE_LLM_SHIPPED_TABLES") == "0" else _shipped()


def effective_table() -> dict:
    """Every entry the dispatcher can read: the user's over the shipped ones."""
    return {**shipped_table(), **load_table()}


def lookup(n: int, k: int, dtype: torch.dtype, device: torch.device) -> dict | None:
    """The tuned entry of this shape on this device's GPU: the user's (``sparse-llm tune``), else the shipped one,
    else None."""
    if device.type != "cuda":
        return None
    key = entry_key(_cached_gpu_name(device.index), n, k, dtype)
    return load_table().get(key) or shipped_table().get(key)


@functools.cache
def _cached_gpu_name(index: int | None) -> str:
    return gpu_name(index)


# Before a shape is tuned, the sparse tensor-core kernel takes M up to here (H100 sweep of the pipelined kernel:
# 1.08-1.37x of cuBLAS at M = 32, 0.91-1.28x at M = 64, where cuSPARSELt is at 0.8-1.1x;
# bench/results/mma_sweep_v7_h100.json).
DEFAULT_MMA_MAX = 64


def choose_backend(
    n: int, k: int, m: int, dtype: torch.dtype, device: torch.device, cusparselt_ok: bool, mma_ok: bool = False
) -> str:
    """``"sparse_mma"``, ``"triton_small"`` or ``"cusparselt"`` for a call with M rows: the fastest measured for
    M's bucket (``sparse-llm tune``), else the defaults (sparse tensor cores up to :data:`DEFAULT_MMA_MAX`, then
    Triton up to :data:`DEFAULT_CROSSOVER`, then cuSPARSELt)."""
    available = {"triton_small": True, "cusparselt": cusparselt_ok, "sparse_mma": mma_ok}
    entry = lookup(n, k, dtype, device)
    if entry:
        best = entry.get("backends", {}).get(str(m_bucket(m)))
        if best and available.get(best):
            return best
    if mma_ok and m <= DEFAULT_MMA_MAX:
        return "sparse_mma"
    if not cusparselt_ok:
        return "triton_small"
    crossover = entry["crossover"] if entry else DEFAULT_CROSSOVER
    return "triton_small" if m <= crossover else "cusparselt"


def _tuned(field: str, n: int, k: int, m: int, dtype: torch.dtype, device: torch.device) -> dict | None:
    """The tuned configuration ``field`` of this shape for M's bucket, or None."""
    entry = lookup(n, k, dtype, device)
    return entry.get(field, {}).get(str(m_bucket(m))) if entry else None


def small_config(n: int, k: int, m: int, dtype: torch.dtype, device: torch.device) -> SmallConfig:
    """The tuned Triton configuration for M's bucket, else the heuristic ``default_config``."""
    cfg = _tuned("triton_configs", n, k, m, dtype, device)
    return SmallConfig(**cfg) if cfg else default_config(m, n, k, device)


def mma_config(n: int, k: int, m: int, dtype: torch.dtype, device: torch.device):
    """The tuned sparse tensor-core configuration for M's bucket, else its heuristic ``default_config``."""
    from sparse_llm.backends.sparse_mma import MmaConfig
    from sparse_llm.backends.sparse_mma import default_config as mma_default

    cfg = _tuned("mma_configs", n, k, m, dtype, device)
    return MmaConfig(**cfg) if cfg else mma_default(m, n, k, device)


def mma_candidates(m: int, n: int, k: int, device: torch.device) -> list:
    """The heuristic's tile and its neighbours: tokens per block (half, same, double), rows per warp, pipeline
    depth, warps per block, and for each tile its automatic split of K, a half, a quarter and an eighth of it (the
    H100 sweeps v7 and v8: fewer pieces than the automatic split were fastest in 31 of 36 cases, more pieces in 3).
    Where the heuristic picks the pipelined kernel (32+ tokens), only pipelined tiles: the register kernel was never
    the fastest there in those sweeps. On sm_90 every split of 2-8 pieces also with the cluster reduction (faster on
    the small layers up to 32 tokens, slower on most others: mma_variant_cluster_h100.json). Where the warpgroup
    kernel runs, its candidates (:func:`wgmma_candidates`) and the mma.sp default only."""
    from sparse_llm.backends.sparse_mma import MAX_CLUSTER, TILES, MmaConfig, auto_split, clusters_available
    from sparse_llm.backends.sparse_mma import mma_sp_default_config as mma_default

    base = mma_default(m, n, k, device)
    warpgroup = wgmma_candidates(m, n, k, device)
    if warpgroup:  # H100: the warpgroup kernel was the fastest in 110 of 110 tuned entries (crossover_h100.json)
        return [base] + [c for c in warpgroup if c != base]
    clusters = clusters_available(device)
    out = [base]
    for rows, tokens, stages, warps in sorted(TILES):
        if tokens not in (base.tokens // 2, base.tokens, base.tokens * 2) or (base.stages >= 3 and stages < 3):
            continue
        split = auto_split(m, n, k, rows, tokens, device, warps)
        for s in sorted({max(1, split // 8), max(1, split // 4), max(1, split // 2), split}):
            for cluster in (False, True) if clusters and 2 <= s <= MAX_CLUSTER else (False,):
                cfg = MmaConfig(rows, tokens, stages, s, warps, cluster)
                if cfg not in out:
                    out.append(cfg)
    return out


def sparse_mma_candidates(m: int, n: int, k: int, device: torch.device) -> list:
    """The sparse tensor-core configurations :func:`tune_shape` times at this M: :func:`mma_candidates` up to
    ``MMA_TUNE_MAX_M``, the warpgroup kernel's (:func:`wgmma_candidates`) above."""
    return mma_candidates(m, n, k, device) if m <= MMA_TUNE_MAX_M else wgmma_candidates(m, n, k, device)


def wgmma_candidates(m: int, n: int, k: int, device: torch.device) -> list:
    """The warpgroup kernel's tiles of M's token count (a power of two, 8-256), half and double it, with 64, 128 and
    256 rows per block and W or x shared in clusters (``wgmma_tiles_near``), each with no split, its
    automatic split (``wgmma_split``), half and double that (clusters: no split and the automatic one); none where the
    kernel does not run (not an H100/H200, or no toolkit to build it)."""
    from sparse_llm.backends.sparse_mma import WGMMA_CHUNK, wgmma_config, wgmma_split, wgmma_tiles_near, wgmma_usable

    if not wgmma_usable(device) or k % WGMMA_CHUNK:
        return []
    out = []
    for tokens, warpgroups, cluster_tokens, cluster_rows in wgmma_tiles_near(m, n):
        split = wgmma_split(m, n, k, tokens, warpgroups, device)
        # (clusters: no split and the automatic one only, to keep the tuning short)
        splits = {1, split} if cluster_tokens * cluster_rows > 1 else {1, max(1, split // 2), split, 2 * split}
        for s in sorted(splits):
            if s == 1 or k // (WGMMA_CHUNK * s) >= 4:
                out.append(wgmma_config(tokens, warpgroups, s, (cluster_tokens, cluster_rows)))
    return out


def candidate_configs(m: int, n: int, k: int, device: torch.device) -> list[SmallConfig]:
    """The launch configurations tried for M: the heuristic's choice plus a few neighbours of both kernels."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    from sparse_llm.backends.triton_small import _split_k_for

    out = [default_config(m, n, k, device)]

    def add(kernel: str, block_m: int, block_n: int, block_q: int, warps: int, stages: int) -> None:
        programs = triton.cdiv(n, block_n) * (m if kernel in ("gemv", "fma") else triton.cdiv(m, block_m))
        split = _split_k_for(programs, k // 16, block_q, sms)
        for s in sorted({1, split}):
            cfg = SmallConfig(kernel, block_m, block_n, block_q, s, warps, stages)
            if cfg not in out:
                out.append(cfg)

    if m <= 4:
        bm = triton.next_power_of_2(m)
        for bn, bq in ((16, 64), (16, 32), (32, 32)):
            add("select", bm, bn, bq, 4, 1)
        for bn, bq in ((16, 32), (32, 16), (8, 64)):
            add("gemv", 1, bn, bq, 4, 1)
    if m <= 2:  # one row of x per program: best at M = 1 on the H100 with BLOCK_N 8 (bench/results/small_m_*)
        for bn, bq in ((8, 64), (16, 64)):
            add("fma", 1, bn, bq, 4, 1)
    if m >= 2:
        bm = min(max(16, triton.next_power_of_2(m)), 128)
        for bn, bq, stages in ((64, 4, 4), (128, 4, 3), (32, 8, 3)):
            add("dot", bm, bn, bq, 4, stages)
    return out


def _random_24(n: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from sparse_llm.format import Sparse24Weight

    w = torch.randn(n, k, device=device, dtype=dtype)
    keep = torch.rand(n, k // 4, 4, device=device).argsort(-1) < 2
    packed = Sparse24Weight.from_dense(w * keep.reshape(n, k))
    return packed.values, packed.meta


def _bench(fn) -> float:
    """Median microseconds of a CUDA-graph replay of ``fn``: the kernels' time without the host's launch cost,
    which is about the same for every configuration of one backend and would hide their differences at small M."""
    from sparse_llm.benchmark import time_graph_us

    return time_graph_us(fn)


def time_us(fn) -> float:
    """Median microseconds of ``fn`` launched eagerly (the host's launch cost included when it dominates)."""
    from sparse_llm.benchmark import time_us as eager

    return eager(fn)


# An eager time above EAGER_WINDOW x the graph time + EAGER_WINDOW_US is a host-side window, measured again.
EAGER_WINDOW = 1.5
EAGER_WINDOW_US = 10.0


def in_eager_window(eager: float, graph_us: float) -> bool:
    """Whether an eager time is so far above the graph-replay time that the host, not the GPU, set it."""
    return eager > EAGER_WINDOW * graph_us + EAGER_WINDOW_US


def eager_us(fn, graph_us: float, tries: int = 4, first: float | None = None) -> float:
    """Eager time of ``fn``, the best of two runs, and of up to ``tries`` while it stays far above the graph-replay
    time: the H100 grids showed single eager windows at 5-15x the graph time (4096x14336 M = 8: 200 us against
    40.8 us in both of two runs) that flipped the choice; a real launch cost shows up in every run. ``first``: a
    run the caller already measured (counted as the first of the two)."""
    eager = min(time_us(fn) if first is None else first, time_us(fn))
    return best_while(lambda: time_us(fn), lambda t: in_eager_window(t, graph_us), eager, tries - 2)


def best_while(measure, too_slow, best: float, tries: int) -> float:
    """``best``, or while ``too_slow(best)`` the best of it and up to ``tries`` more runs of ``measure``: how an
    outlier time is measured again (eager times here, graph replays in ``benchmark.time_graph_us``)."""
    for _ in range(tries):
        if not too_slow(best):
            break
        best = min(best, measure())
    return best


def _bench_stream(fns) -> float:
    """Median microseconds per call of ``fns`` back to back in one CUDA graph (``benchmark.time_stream_us``)."""
    from sparse_llm.benchmark import time_stream_us

    return time_stream_us(fns)


# weigh_stream: the sparse tensor-core candidates within STREAM_SLACK of the fastest graph replay, at most
# STREAM_SHORTLIST of them, are timed in a stream too. 1.15: on the H100 at 43c3190 the stream's better tile for
# 1024x4096 at M = 512 was 6.7% slower replayed (17.5 against 16.4 us) and 18% faster in the stream (11.3 against 13.7);
# at 439949e the tiles the weighing took on 1024x8192 were 1.4-5% behind the fastest replay.
STREAM_SLACK = 1.15
STREAM_SHORTLIST = 4


def stream_shortlist(graph_us: list[float]) -> list[int]:
    """The indices of the candidates worth timing in a stream: those within :data:`STREAM_SLACK` of the fastest
    replay, the fastest first, at most :data:`STREAM_SHORTLIST`."""
    if not graph_us:
        raise ValueError("no candidate was timed")
    best = min(graph_us)
    order = sorted(range(len(graph_us)), key=graph_us.__getitem__)
    return [i for i in order if graph_us[i] <= STREAM_SLACK * best][:STREAM_SHORTLIST]


def weigh_columns(graph_us: list[float], stream_us: list[float]) -> int:
    """The index of the candidate whose worse column is the least behind that column's best: each time over the
    column's fastest, the larger of the two ratios, minimised (ties to the faster replay)."""
    if len(graph_us) != len(stream_us) or not graph_us:
        raise ValueError(f"one stream time per replay time, got {len(graph_us)} and {len(stream_us)}")
    g0, s0 = min(graph_us), min(stream_us)
    return min(range(len(graph_us)), key=lambda i: (max(graph_us[i] / g0, stream_us[i] / s0), graph_us[i]))


def weighed_pick(graph_us: list[float], stream_us_of) -> int:
    """The index of the candidate ``weigh_stream`` takes: of the shortlist (:func:`stream_shortlist`), timed in a stream
    by ``stream_us_of(index)``, the one least behind in its worse column (:func:`weigh_columns`)."""
    shortlist = stream_shortlist(graph_us)
    stream = [stream_us_of(i) for i in shortlist]
    return shortlist[weigh_columns([graph_us[i] for i in shortlist], stream)]


def _best_mma(x: torch.Tensor, weights: list, cands: list, rows: list, weigh_stream: bool) -> tuple:
    """(configuration, graph-replay us) of the sparse tensor-core kernel at x's M: the fastest replay of
    ``weights[0]``, or with ``weigh_stream`` the shortlist's best in both columns, the stream over all ``weights``.
    Every time is appended to ``rows``."""
    from sparse_llm.backends import sparse_mma

    m = x.shape[0]
    graph, timed = [], []
    for cfg in cands:
        graph.append(_bench(lambda cfg=cfg: sparse_mma.spmm24_mma(x, *weights[0], None, cfg)))
        timed.append({"m": m, "mma_config": cfg.as_dict(), "us": graph[-1]})
    rows += timed
    if not weigh_stream:
        pick = min(range(len(graph)), key=graph.__getitem__)
        return cands[pick], graph[pick]

    def stream_us_of(i: int) -> float:
        timed[i]["stream_us"] = _bench_stream(
            [lambda w=w, c=cands[i]: sparse_mma.spmm24_mma(x, *w, None, c) for w in weights]
        )
        return timed[i]["stream_us"]

    pick = weighed_pick(graph, stream_us_of)
    return cands[pick], graph[pick]


def tune_shape(
    n: int,
    k: int,
    dtype: torch.dtype = torch.bfloat16,
    ms: tuple[int, ...] = TUNE_MS,
    device: str = "cuda",
    weigh_stream: bool = True,
) -> dict:
    """Measure one (N, K) layer shape; returns its table entry (times in microseconds). The sparse tensor-core
    kernel's tile is, with ``weigh_stream``, the one of the shortlist (:func:`stream_shortlist`) that gives up least
    in the graph replay after the cache clear or in a stream of distinct copies of the layer back to back
    (:func:`weigh_columns`), the way a model runs its layers; without, the fastest replay. H100 at 439949e
    (bench/results/tile_stream_h100_439949e.json): on 1024x8192 at M = 256-1024 the weighed tile was 1.4-5% slower
    replayed and 9-18% faster in the stream than the fastest replay (the grid's stream rows 0.94-0.99x -> 1.01-1.08x);
    on 1024x4096 the two picks were the same."""
    from sparse_llm.backends import cusparselt

    ms = check_ms(ms)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    values, meta = _random_24(n, k, dtype, dev)
    try:
        compressed, meta = cusparselt.compress_values(values, meta)
        values = compressed[: values.numel()].view(values.shape)
    except ExtensionUnavailable:
        compressed = None
    from sparse_llm.backends import sparse_mma

    try:
        sparse_mma.load_mma_extension()
        mma_ok = sparse_mma.shape_supported(n, k)
    except ExtensionUnavailable:
        mma_ok = False
    rows = []
    crossover = max(ms)
    configs, mma_configs, backends = {}, {}, {}
    weights = [(values, meta)]
    if weigh_stream and mma_ok:  # the stream's weights: enough distinct copies to span several L2 caches
        from sparse_llm.benchmark import stream_count

        weights += [(values.clone(), meta.clone()) for _ in range(stream_count(n, k) - 1)]
    for m in ms:
        x = torch.randn(m, k, device=dev, dtype=dtype)
        best_cfg, best_t = None, float("inf")
        for cfg in candidate_configs(m, n, k, dev):
            try:
                t = _bench(lambda cfg=cfg, x=x: spmm24_small(x, values, meta, None, cfg))
            except Exception as err:  # a configuration that does not compile here (resources): skip it
                rows.append({"m": m, "config": cfg.as_dict(), "error": f"{type(err).__name__}: {err}"[:200]})
                continue
            rows.append({"m": m, "config": cfg.as_dict(), "us": t})
            if t < best_t:
                best_cfg, best_t = cfg, t
        configs[str(m)] = best_cfg.as_dict()
        runs = {"triton_small": lambda x=x, c=best_cfg: spmm24_small(x, values, meta, None, c)}
        times = {"triton_small": best_t}
        if compressed is not None:
            runs["cusparselt"] = lambda x=x: cusparselt.cusparselt_linear(x, compressed, n, k)
            times["cusparselt"] = _bench(runs["cusparselt"])
            if times["cusparselt"] < best_t and crossover == max(ms):
                crossover = ms[ms.index(m) - 1] if ms.index(m) > 0 else 0
        mma_cands = sparse_mma_candidates(m, n, k, dev)
        if mma_ok and mma_cands:
            best_mma, t_mma = _best_mma(x, weights, mma_cands, rows, weigh_stream)
            mma_configs[str(m)] = best_mma.as_dict()
            runs["sparse_mma"] = lambda x=x, c=best_mma: sparse_mma.spmm24_mma(x, values, meta, None, c)
            times["sparse_mma"] = t_mma
        # The choice: the best of the slower of graph replay and eager time. Graph replay alone hides the host's
        # launch cost, which is not the same for every backend (Triton's launcher costs tens of microseconds
        # eager, our extensions a few): a backend must be fast in both modes to be chosen.
        cost = {}
        for name, t in times.items():
            eager = eager_us(runs[name], t)
            rows.append({"m": m, "backend": name, "us": t, "eager_us": eager})
            cost[name] = max(t, eager)
        backends[str(m)] = min((c, name) for name, c in cost.items())[1]
    return {
        "gpu": gpu_name(dev),
        "n": n,
        "k": k,
        "dtype": str(dtype).removeprefix("torch."),
        "crossover": crossover,
        "backends": backends,
        "triton_configs": configs,
        "mma_configs": mma_configs,
        "measurements": rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }


def _merged(old: dict | None, new: dict, ms: tuple[int, ...]) -> dict:
    """A new entry measured at ``ms`` over the old one: its M buckets replace the old ones, the others stay; the
    Triton/cuSPARSELt crossover stays the old one unless the new run measured from M = 1."""
    if not old:
        return new
    out = dict(new)
    for field in ("backends", "triton_configs", "mma_configs"):
        out[field] = {**old.get(field, {}), **new.get(field, {})}
    if min(ms) > 1 and "crossover" in old:
        out["crossover"] = old["crossover"]
    return out


def tune(
    shapes: list[tuple[int, int]],
    dtype: torch.dtype = torch.bfloat16,
    ms: tuple[int, ...] = TUNE_MS,
    path: Path | None = None,
    weigh_stream: bool = True,
) -> list[dict]:
    """Tune every (N, K) in ``shapes`` on the current GPU and merge the entries into the cache file (over the user's
    entry, else the shipped one: buckets not in ``ms`` keep its choices; ``weigh_stream``: see :func:`tune_shape`)."""
    ms = check_ms(ms)
    if not torch.cuda.is_available():
        raise RuntimeError("tuning needs a CUDA GPU: the crossover is measured, not guessed")
    path = path or cache_path()
    entries = [tune_shape(n, k, dtype, ms, weigh_stream=weigh_stream) for n, k in shapes]
    table = dict(load_table(path))
    for e in entries:
        key = entry_key(e["gpu"], e["n"], e["k"], dtype)
        old = table.get(key) or shipped_table().get(key)
        table[key] = _merged(old, {kk: v for kk, v in e.items() if kk != "measurements"}, ms)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True))
    _table.cache_clear()
    return entries
