"""Per-layer latency of 2:4 linears against dense cuBLAS: the library behind ``bench/layers.py`` and
``sparse-llm bench layers``.

For Llama linear shapes and a range of token counts M, it times side by side in one process: dense ``F.linear``
(cuBLAS), PyTorch's ``to_sparse_semi_structured`` (cuSPARSELt path), and SparseLinear (auto dispatch, and each GPU
backend forced). Each time is the median of ``triton.testing.do_bench`` (which clears the L2 cache before every
run), plus the median replay of the same call captured in a CUDA graph, plus (dense and SparseLinear auto) the time
per call of a stream: distinct copies of the layer, several L2 caches of weight in all, run back to back in one
CUDA graph as a model runs its layers, with no cache clear and no per-call timing cost. Achieved TB/s (bytes a
perfect kernel must move: weight, x and y once) and dense-equivalent TFLOP/s are reported with the ceilings
measured in the same run (a device-to-device copy and an 8192^3 bf16 cuBLAS matmul). From M = 1024 on (power-capped
calls), dense and SparseLinear (auto) are timed in alternating rounds and each column is the median of its rounds.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from sparse_llm import Sparse24Weight, SparseLinear, backends, tune

# (layer, N = out_features, K = in_features) of each model's linears (GQA: k/v have fewer output features).
LLAMA_SHAPES: dict[str, list[tuple[str, int, int]]] = {
    "Llama-2-7B": [("q/k/v/o_proj", 4096, 4096), ("gate/up_proj", 11008, 4096), ("down_proj", 4096, 11008)],
    "Llama-2-70B": [
        ("q/o_proj", 8192, 8192),
        ("k/v_proj", 1024, 8192),
        ("gate/up_proj", 28672, 8192),
        ("down_proj", 8192, 28672),
    ],
    "Llama-3-8B": [
        ("q/o_proj", 4096, 4096),
        ("k/v_proj", 1024, 4096),
        ("gate/up_proj", 14336, 4096),
        ("down_proj", 4096, 14336),
    ],
}
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
ODD_MS = (7, 33, 100, 1000)
QUICK_SHAPES = {
    "Llama-2-7B": [("q/k/v/o_proj", 4096, 4096)],
    "Llama-2-70B": [("gate/up_proj", 28672, 8192)],
    "Llama-3-8B": [("k/v_proj", 1024, 4096)],
}
QUICK_MS = (1, 7, 16, 64, 256, 1024, 4096)


def parse_shape(text: str) -> tuple[int, int]:
    """(N, K) from "NxK"; ValueError names a string that is not that."""
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} is not NxK (e.g. 4096x11008)") from None
    return n, k


def distinct_shapes(shapes: dict[str, list[tuple[str, int, int]]]) -> list[tuple[int, int]]:
    """The distinct (N, K) of ``shapes``' layers, sorted."""
    return sorted({(n, k) for layers in shapes.values() for _, n, k in layers})


def select_shapes(shapes: dict[str, list[tuple[str, int, int]]], wanted: list[str]) -> dict:
    """The layers of ``shapes`` whose (N, K) is one of ``wanted`` ("NxK" strings); ValueError names a string that is
    not NxK or a shape that is not in ``shapes``."""
    keys = {parse_shape(w) for w in wanted}
    have = distinct_shapes(shapes)
    if missing := sorted(keys - set(have)):
        raise ValueError(f"shapes {missing} are not in the grid; it has {have}")
    picked = {model: [layer for layer in layers if layer[1:] in keys] for model, layers in shapes.items()}
    return {model: layers for model, layers in picked.items() if layers}


PROVIDERS = ("dense", "torch_semi", "ours_auto", "ours_sparse_mma", "ours_triton_small", "ours_cusparselt")
# Beyond this M the small-M kernel is not a candidate (minutes of benchmark for a known loser).
TRITON_SMALL_MAX_M = 256
REGIMES = {"M<=16": (1, 16), "M 32-256": (32, 256), "M>=1024": (1024, 1 << 30)}


def git_sha() -> str:
    """The commit measured: ``$SPARSE_LLM_GIT_SHA`` when set (the GPU machine's copy of the tree has no .git),
    else ``git rev-parse HEAD``, else "unknown"."""
    if os.environ.get("SPARSE_LLM_GIT_SHA"):
        return os.environ["SPARSE_LLM_GIT_SHA"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    """GPU, library versions (cuSPARSELt: PyTorch's and, on a GPU, our extension's), date and git sha of a run:
    the header of every result file."""
    cuda = torch.cuda.is_available()
    env = {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "cusparselt_torch": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
    }
    if cuda:
        status = backends.status()
        env["cusparselt_ours"] = status["cusparselt_version"]
        env["cusparselt_reason"] = status["cusparselt_reason"]
    return env


def time_us(fn: Callable[[], object]) -> float:
    """Median microseconds of ``fn`` (do_bench: events, L2 cleared before each run)."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e3


def capture_graph(fn: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """A CUDA graph of ``fn`` and the output of the captured call. ``fn`` runs once first on a side stream (plans,
    searches, compilation happen outside the capture); raises if capture fails."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def time_graph_us(fn: Callable[[], object], eager_us: float | None = None, tries: int = 4) -> float:
    """Median microseconds of a CUDA-graph replay of ``fn`` (warmed up first; raises if capture fails). Given the
    eager time of the same call, a replay time far above it (``tune.in_eager_window`` with the roles swapped: a
    replay has no host cost to add) is timed again, the best of up to ``tries``: the H100 grid at f1c102c had one
    replay median at 90.5 us where the same kernel took 38.2 us replayed and 38.0 us eager (4096x14336, M = 7)."""
    graph, _ = capture_graph(fn)
    first = time_us(graph.replay)
    if eager_us is None:
        return first
    return tune.best_while(lambda: time_us(graph.replay), lambda t: tune.in_eager_window(t, eager_us), first, tries - 1)


def events_us(
    fn: Callable[[], object], reps: int = 20, warmup: int = 3, before: Callable[[], object] | None = None
) -> float:
    """Median microseconds of ``fn`` between CUDA events, no cache clear (unlike ``time_us``); ``before`` (if given)
    runs before each run, outside the events."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for a, b in zip(start, end, strict=True):
        if before is not None:
            before()
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(start, end, strict=True)) * 1e3


def enqueue_us(fn: Callable[[], object], calls: int = 50, batches: int = 1) -> float:
    """Host microseconds per call of ``fn`` called ``calls`` times without a synchronization (the median over
    ``batches`` such runs, the GPU drained between them)."""
    torch.cuda.synchronize()
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


# A stream's weights span at least this many L2 caches, so each call of the stream reads its own weight cold.
STREAM_L2_MULTIPLE = 4


def stream_length(weight_bytes: int, l2_bytes: int) -> int:
    """How many distinct copies of a layer run back to back in a stream: enough that their weights are
    ``STREAM_L2_MULTIPLE`` L2 caches or more, and at least 2."""
    if weight_bytes <= 0 or l2_bytes <= 0:
        raise ValueError(f"weight_bytes ({weight_bytes}) and l2_bytes ({l2_bytes}) must be positive")
    return max(2, math.ceil(STREAM_L2_MULTIPLE * l2_bytes / weight_bytes))


def time_stream_us(fns: list[Callable[[], object]], reps: int = 20, warmup: int = 3) -> float:
    """Median microseconds per call of ``fns`` run back to back in one CUDA graph, the way a model runs its layers:
    each ``fn`` has its own weight, the weights together span several L2 caches (``stream_length``), so nothing is
    cleared between replays: a call's weight has been pushed out of L2 by the others' before it is read again; x and
    the outputs stay where the previous call left them. Unlike ``time_graph_us`` there is no 256 MB memset before
    each timed call: its dirty lines and the fixed cost of one timed launch fall on every call there
    (``bench/harness_floor.py``), here on none."""
    if len(fns) < 2:
        raise ValueError(f"a stream needs at least 2 calls, got {len(fns)}")
    graph, _ = capture_graph(lambda: [fn() for fn in fns])
    return events_us(graph.replay, reps, warmup) / len(fns)


def host_window(fn: Callable[[], object], calls: int = 50) -> dict:
    """What the host did while an eager time stayed far above the graph time: microseconds per call to enqueue
    ``fn`` (no synchronization between the calls) and the 1-minute load average of the machine."""
    return {"enqueue_us_per_call": enqueue_us(fn, calls), "loadavg_1min": os.getloadavg()[0]}


def measure_ceilings(dtype: torch.dtype = torch.bfloat16) -> dict:
    """Copy bandwidth (bytes read + written) and the dense matmul rate, measured here and now."""
    src = torch.empty(1 << 29, dtype=torch.uint8, device="cuda")  # 512 MiB: far beyond L2
    src.random_()
    dst = torch.empty_like(src)
    copy_us = time_us(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    mm_us = time_us(lambda: a @ b)
    return {"copy_tb_s": 2 * src.numel() / copy_us / 1e6, "dense_tflops": 2 * 8192**3 / mm_us / 1e6}


def _random_24(n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    keep = torch.rand(n, k // 4, 4, device="cuda").argsort(-1) < 2
    return w * keep.reshape(n, k)


def _torch_semi(dense: torch.Tensor):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = False  # the CUTLASS path refuses sm90 (DESIGN.md)
    return to_sparse_semi_structured(dense)


def _providers(dense: torch.Tensor, layer: SparseLinear, semi, x: torch.Tensor, m: int) -> dict:
    out: dict[str, Callable[[], object] | str] = {"dense": lambda: F.linear(x, dense)}
    out["torch_semi"] = (lambda: F.linear(x, semi)) if not isinstance(semi, str) else semi
    out["ours_auto"] = lambda: layer(x)
    out["ours_sparse_mma"] = (
        (lambda: backends.linear(layer, x, backend="sparse_mma"))
        if m <= TRITON_SMALL_MAX_M
        else f"skipped: M > {TRITON_SMALL_MAX_M} is beyond the small-M kernels' range"
    )
    out["ours_triton_small"] = (
        (lambda: backends.linear(layer, x, backend="triton_small"))
        if m <= TRITON_SMALL_MAX_M
        else f"skipped: M > {TRITON_SMALL_MAX_M} is beyond the small-M kernel's range"
    )
    out["ours_cusparselt"] = lambda: backends.linear(layer, x, backend="cusparselt")
    return out


def _l2_bytes() -> int:
    """The GPU's L2 cache size in bytes (50 MB, the H100's, where torch does not report it)."""
    return getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 << 20)


def stream_count(n: int, k: int) -> int:
    """How many distinct copies of a 2:4 (n, k) layer a stream takes on this GPU (``stream_length`` of its packed
    bytes, 1.125 n k, and this GPU's L2)."""
    return stream_length(int(1.125 * n * k), _l2_bytes())


def stream_copies(n: int, k: int, dtype: torch.dtype, count: int | None = None):
    """(masked dense weights, SparseLinear layers): ``count`` distinct random 2:4 (n, k) layers on the GPU, by default
    enough for a stream (:func:`stream_count`)."""
    if count is None:
        count = stream_count(n, k)
    denses = [_random_24(n, k, dtype) for _ in range(count)]
    return denses, [SparseLinear.from_weight(Sparse24Weight.from_dense(d)) for d in denses]


def _stream_times(denses: list[torch.Tensor], layers: list[SparseLinear], x: torch.Tensor) -> dict[str, float]:
    """Per-call stream times (``time_stream_us``) of dense ``F.linear`` and of SparseLinear (auto) over the copies."""
    return {
        "dense": time_stream_us([lambda w=w: F.linear(x, w) for w in denses]),
        "ours_auto": time_stream_us([lambda layer=layer: layer(x) for layer in layers]),
    }


# From this M on, dense and SparseLinear (auto) are timed in PAIRED_ROUNDS rounds, the two in alternating order, and
# each column is the median of its rounds: such calls run at the power cap, and one timed after a pause ran 2-17%
# faster than under sustained load (h200/graph_vs_eager_1e382b3.json), so a provider timed alone after the other is in
# another state.
PAIRED_MIN_M = 1024
PAIRED_ROUNDS = 3


def _paired_rounds(fns: dict[str, Callable[[], object]], results: dict[str, dict], rounds: int) -> None:
    """Time the providers of ``fns`` (their rows in ``results`` already hold one eager and one replayed time) in
    ``rounds - 1`` more rounds, the order reversed in every other round, and set each column to the median of all
    rounds (the rounds kept as ``us_rounds`` and ``graph_us_rounds``)."""
    graphs = {name: capture_graph(fn)[0] for name, fn in fns.items() if results[name]["graph_us"] is not None}
    for name in fns:
        results[name]["us_rounds"] = [results[name]["us"]]
        results[name]["graph_us_rounds"] = [results[name]["graph_us"]] if name in graphs else []
    names = list(fns)
    for r in range(1, rounds):
        for name in names[::-1] if r % 2 else names:
            results[name]["us_rounds"].append(time_us(fns[name]))
            if name in graphs:
                results[name]["graph_us_rounds"].append(time_us(graphs[name].replay))
    for name in fns:
        results[name]["us"] = statistics.median(results[name]["us_rounds"])
        if name in graphs:
            results[name]["graph_us"] = statistics.median(results[name]["graph_us_rounds"])


def bench_shape(
    n: int,
    k: int,
    ms: tuple[int, ...],
    dtype: torch.dtype,
    ceilings: dict,
    graphs: bool = True,
    log=print,
    streams: bool = True,
) -> list[dict]:
    """Rows (one per M and provider) for one (N, K) shape. ``streams``: also time dense and SparseLinear (auto)
    as a stream of distinct copies of the layer (``time_stream_us``; the ``stream_us`` column). From
    :data:`PAIRED_MIN_M` on, dense and SparseLinear (auto) get :data:`PAIRED_ROUNDS` alternating rounds."""
    denses, layers = stream_copies(n, k, dtype, None if streams else 1)
    dense, layer = denses[0], layers[0]
    try:
        semi = _torch_semi(dense)
    except Exception as err:  # PyTorch refuses (shape, dtype, arch): say so in every row
        semi = f"refused: {type(err).__name__}: {err}"[:300]
    if streams:
        # One stream of the fresh copies, not recorded: the first stream of freshly made copies ran ~15% slower than
        # the same copies measured again (bench/stream_m1.py, bench/NOTES.md, tenth round). A failure here shows
        # again, recorded, in the stream of each M.
        try:
            _stream_times(denses, layers, torch.randn(1, k, device="cuda", dtype=dtype))
        except Exception as err:
            log(f"{n}x{k}: the unrecorded first stream failed: {type(err).__name__}: {err}")
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        chosen = backends.select(layer, x).name
        base = {"n": n, "k": k, "m": m, "dtype": str(dtype).removeprefix("torch."), "auto_backend": chosen}
        dense_bytes = 2 * n * k + x.element_size() * (m * k + m * n)
        sparse_bytes = 1.125 * n * k + x.element_size() * (m * k + m * n)
        results, providers = {}, _providers(dense, layer, semi, x, m)
        for name, fn in providers.items():
            row = dict(base, provider=name, us=None, graph_us=None, note=None)
            if isinstance(fn, str):
                row["note"] = fn
            else:
                try:
                    row["us"] = time_us(fn)
                except Exception as err:
                    row["note"] = f"failed: {type(err).__name__}: {err}"[:300]
                if graphs and row["us"] is not None:
                    try:
                        row["graph_us"] = time_graph_us(fn, eager_us=row["us"])
                    except Exception as err:
                        row["note"] = f"graph capture failed: {type(err).__name__}: {err}"[:300]
                    else:  # an eager window far above the graph time is measured again, as the tuning does
                        row["us"] = tune.eager_us(fn, row["graph_us"], first=row["us"])
                        if tune.in_eager_window(row["us"], row["graph_us"]):
                            row["host_window"] = host_window(fn)
            results[name] = row
            rows.append(row)
        paired = {name: providers[name] for name in ("dense", "ours_auto") if results[name]["us"] is not None}
        if m >= PAIRED_MIN_M and len(paired) == 2:
            _paired_rounds(paired, results, PAIRED_ROUNDS)
        for name, row in results.items():
            moved = dense_bytes if name == "dense" else sparse_bytes
            if row["us"]:
                row["tb_s"] = moved / row["us"] / 1e6
                row["tflops"] = 2 * m * n * k / row["us"] / 1e6
                row["pct_copy_bw"] = 100 * row["tb_s"] / ceilings["copy_tb_s"]
                row["pct_dense_peak"] = 100 * row["tflops"] / ceilings["dense_tflops"]
        if streams:
            try:
                for name, us in _stream_times(denses, layers, x).items():
                    results[name]["stream_us"] = us
            except Exception as err:
                results["ours_auto"]["note"] = f"stream failed: {type(err).__name__}: {err}"[:300]
        for row in results.values():
            d = results["dense"]
            row["speedup"] = d["us"] / row["us"] if row["us"] and d["us"] else None
            row["graph_speedup"] = d["graph_us"] / row["graph_us"] if row["graph_us"] and d["graph_us"] else None
            if row.get("stream_us") and d.get("stream_us"):
                row["stream_speedup"] = d["stream_us"] / row["stream_us"]
        times = " ".join(
            f"{r['provider']}={r['us']:.1f}us" if r["us"] else f"{r['provider']}=-" for r in rows[-len(results) :]
        )
        stream = results["ours_auto"].get("stream_speedup")
        stream = f" stream x{stream:.2f} ({len(layers)} copies)" if stream else ""
        log(f"{n}x{k} M={m}: {times} auto={chosen} x{results['ours_auto'].get('speedup') or 0:.2f}{stream}")
        del x
    return rows


def summarize(rows: list[dict], provider: str = "ours_auto", column: str = "speedup") -> dict:
    """Median over shapes of ours/dense per regime of M, and the worst M (min over shapes and M)."""
    picked = [r for r in rows if r["provider"] == provider and r.get(column)]
    out = {}
    for regime, (lo, hi) in REGIMES.items():
        vals = [r[column] for r in picked if lo <= r["m"] <= hi]
        out[regime] = statistics.median(vals) if vals else None
    out["min_any_m"] = min((r[column] for r in picked), default=None)
    return out


SUMMARIES = {  # summary key: (provider, column)
    "eager": ("ours_auto", "speedup"),
    "graph": ("ours_auto", "graph_speedup"),
    "stream": ("ours_auto", "stream_speedup"),
    "torch_semi_eager": ("torch_semi", "speedup"),
    "torch_semi_graph": ("torch_semi", "graph_speedup"),
}


def summaries(rows: list[dict]) -> dict:
    """Every summary a grid reports: ``summarize`` per (provider, column) of ``SUMMARIES``."""
    return {key: summarize(rows, provider, column) for key, (provider, column) in SUMMARIES.items()}


def merge_parts(parts: list[dict], names: list[str]) -> dict:
    """One grid from the results of ``run`` over disjoint sets of shapes (a grid run in parts): rows concatenated,
    summary recomputed over all of them, each part's environment and ceilings kept under ``parts``. The parts must
    come from one commit on one GPU, and no shape may be in two parts."""
    if not parts or len(parts) != len(names):
        raise ValueError(f"merge_parts needs one name per part, got {len(parts)} parts and {len(names)} names")
    for key in ("git_sha", "gpu"):
        seen = sorted({str(p["env"].get(key)) for p in parts})
        if len(seen) > 1:
            raise ValueError(f"the parts differ in {key}: {seen}; a grid is one commit on one GPU")
    rows, shapes, owner = [], {}, {}
    for part, name in zip(parts, names, strict=True):
        for shape, layers in part["shapes"].items():
            if shape in owner:
                raise ValueError(f"shape {shape} is in both {owner[shape]} and {name}")
            owner[shape] = name
            shapes[shape] = layers
        rows += part["rows"]
    return {
        "env": parts[0]["env"],
        "ceilings": parts[0]["ceilings"],
        "shapes": shapes,
        "rows": rows,
        "summary": summaries(rows),
        "crossover_table": parts[0].get("crossover_table"),
        "parts": [
            {"file": name, "env": p["env"], "ceilings": p["ceilings"], "shapes": list(p["shapes"])}
            for p, name in zip(parts, names, strict=True)
        ],
    }


def run(
    shapes: dict[str, list[tuple[str, int, int]]] | None = None,
    ms: tuple[int, ...] | None = None,
    quick: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    graphs: bool = True,
    log=print,
    checkpoint: Callable[[dict], None] | None = None,
    streams: bool = True,
) -> dict:
    """Benchmark every distinct (N, K) of ``shapes`` at every M; returns ``{"env", "ceilings", "shapes", "rows",
    "summary"}`` ready to dump as JSON. ``checkpoint`` gets the partial result after each shape."""
    if not torch.cuda.is_available():
        raise RuntimeError("the layer benchmark needs a CUDA GPU")
    shapes = shapes or (QUICK_SHAPES if quick else LLAMA_SHAPES)
    ms = ms or (QUICK_MS if quick else MS + ODD_MS)
    ceilings = measure_ceilings(dtype)
    log(f"ceilings: copy {ceilings['copy_tb_s']:.2f} TB/s, dense matmul {ceilings['dense_tflops']:.0f} TFLOP/s")
    users: dict[tuple[int, int], list[str]] = {}
    for model, layers in shapes.items():
        for name, n, k in layers:
            users.setdefault((n, k), []).append(f"{model} {name}")
    rows = []
    env = environment()
    result: dict = {}
    for (n, k), names in users.items():
        for row in bench_shape(n, k, tuple(ms), dtype, ceilings, graphs, log, streams):
            row["layers"] = names
            rows.append(row)
        torch.cuda.empty_cache()
        result = {
            "env": env,
            "ceilings": ceilings,
            "shapes": {f"{nn}x{kk}": v for (nn, kk), v in users.items() if any(r["n"] == nn for r in rows)},
            "rows": rows,
            "summary": summaries(rows),
        }
        if checkpoint is not None:
            checkpoint(result)
    return result
