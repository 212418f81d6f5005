"""Shared by the benchmark scripts: result writing (with ``sparse_llm.benchmark.environment`` as the header) and
the measured copy bandwidth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sparse_llm.benchmark import environment


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
