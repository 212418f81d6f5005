"""Shared by the benchmark scripts: the environment record every result JSON carries, and result writing."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch


def git_sha() -> str:
    """The commit measured: $SPARSE_LLM_GIT_SHA (set it where the tree has no .git, e.g. the GPU machine)."""
    if os.environ.get("SPARSE_LLM_GIT_SHA"):
        return os.environ["SPARSE_LLM_GIT_SHA"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    """GPU, versions, date and commit: the header of every result file."""
    import triton

    cusparselt = None
    if hasattr(torch.backends, "cusparselt") and torch.backends.cusparselt.is_available():
        cusparselt = torch.backends.cusparselt.version()
    return {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "cusparselt": cusparselt,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
    }


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
