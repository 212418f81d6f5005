"""Shared by the benchmark scripts: result writing (with ``sparse_llm.benchmark.environment`` as the header), the
measured copy bandwidth, the distinct Llama layer shapes, random 2:4 weights and the relative error."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from sparse_llm import Sparse24Weight, tune
from sparse_llm.benchmark import LLAMA_SHAPES, _random_24, distinct_shapes, environment

RESULTS = Path(__file__).resolve().parent / "results"
# The tuning tables measured by ``sparse-llm tune`` on the H100 and on the H200 (the grids' backend choices).
COMMITTED_TABLES = [RESULTS / "crossover_h100.json", RESULTS / "h200" / "crossover_h200.json"]


def llama_shapes() -> list[tuple[int, int]]:
    """The distinct (N, K) of the Llama-2-7B, Llama-2-70B and Llama-3-8B linears (``benchmark.LLAMA_SHAPES``)."""
    return distinct_shapes(LLAMA_SHAPES)


def random_packed(n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random 2:4 (N, K) weight on the GPU: (masked dense, packed values, metadata)."""
    dense = _random_24(n, k, dtype)
    p = Sparse24Weight.from_dense(dense)
    return dense, p.values, p.meta


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def host_profile(fn: Callable[[], object], calls: int, top: int = 25) -> str:
    """cProfile of ``calls`` calls of ``fn`` (host time; the GPU is drained before, not inside), its ``top``
    functions by their own time as text."""
    torch.cuda.synchronize()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fn()
    profile.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def write_result(out_dir: str | os.PathLike, name: str, payload: dict) -> Path:
    """Write ``{environment, **payload}`` as ``out_dir/name.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=1))
    return path


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted), median of do_bench."""
    import triton.testing

    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def add_tables_argument(parser: argparse.ArgumentParser) -> None:
    """``--tables [PATH ...]``: backend choices from these tuning tables (given bare: the committed ones) in a fresh
    cache dir, instead of the user's cache (see :func:`apply_tables`)."""
    parser.add_argument("--tables", type=Path, nargs="*", default=None,
                        help="backend choices from these tuning tables (none named: the committed H100 and H200 ones) "
                        "instead of the user's cache")  # fmt: skip


def apply_tables(tables: list[Path] | None) -> list[str] | None:
    """What ``--tables`` asked for: nothing when it was not given, else :func:`use_tables` of the named tables or,
    given bare, of the committed ones. Returns the tables used (None: the user's cache), for the result file."""
    if tables is None:
        return None
    tables = tables or COMMITTED_TABLES
    use_tables(tables)
    return [str(p) for p in tables]


def use_tables(tables: list[Path]) -> None:
    """Point the package's tuned table at the entries of ``tables`` (as ``sparse-llm tune`` returns them or as its
    cache file holds them; keyed by GPU name, so each GPU finds its own), written to a fresh cache dir: the user's
    own table stays untouched, and the tables shipped with the package are left out."""
    table = {}
    for path in tables:
        table.update(tune.keyed(json.loads(path.read_text())))
    cache = Path(tempfile.mkdtemp(prefix="sparse-llm-tables-"))
    (cache / tune.CACHE_FILE).write_text(json.dumps(table))
    os.environ["SPARSE_LLM_CACHE"] = str(cache)
    os.environ["SPARSE_LLM_SHIPPED_TABLES"] = "0"  # these tables alone, not the package's
