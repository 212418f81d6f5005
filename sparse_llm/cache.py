"""The user cache directory of sparse-llm: the dequantized default model, the JIT-built extension, tuning tables."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SPARSE_LLM_CACHE``, else ``$XDG_CACHE_HOME/sparse-llm``, else ``~/.cache/sparse-llm`` (not created here)."""
    if os.environ.get("SPARSE_LLM_CACHE"):
        return Path(os.environ["SPARSE_LLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sparse-llm"
