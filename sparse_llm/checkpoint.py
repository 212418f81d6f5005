"""Save and load sparsified models: safetensors with the packed tensors and a format version.

Loading builds nothing twice: the caller's model (ideally built on the meta device) gets empty SparseLinear
layers where the checkpoint holds packed weights, then ``load_state_dict(assign=True)`` puts the tensors in.
Saving writes to a temporary file and renames it, so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparse_llm.format import Sparse24Weight
from sparse_llm.nn import SparseLinear

FORMAT_NAME = "sparse_llm.2to4"
FORMAT_VERSION = "1"


def save_sparse(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` (packed SparseLinear buffers included) to a safetensors file, atomically."""
    path = Path(path)
    state = {}
    seen: set[tuple] = set()
    for key, tensor in model.state_dict().items():
        # Tied weights (embeddings / lm_head) are the same tensor: keep the first name only; load re-ties them.
        # Views of one storage at other offsets or shapes are distinct tensors and are all kept.
        identity = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if identity in seen and tensor.numel():
            continue
        seen.add(identity)
        state[key] = tensor.detach().contiguous().cpu()
    sparse_layers = [name for name, m in model.named_modules() if isinstance(m, SparseLinear)]
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "sparse_layers": ",".join(sparse_layers)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_sparse(model: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu") -> list[str]:
    """Load a :func:`save_sparse` checkpoint into ``model`` (same architecture; its weights are replaced).

    Build ``model`` on the meta device to skip allocating dense weights, as long as its non-persistent buffers
    (e.g. rotary frequencies) are computed by the caller; a model built normally always works.
    The layers saved as SparseLinear are swapped in first; returns their names. Metadata is validated, so a
    corrupt file raises instead of producing a wrong model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sparse-llm checkpoint at {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not a sparse-llm checkpoint (format={metadata.get('format')!r})")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {metadata.get('format_version')!r}, expected {FORMAT_VERSION}")
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open has no items())
    names = [n for n in metadata.get("sparse_layers", "").split(",") if n]
    for name in names:
        linear = model.get_submodule(name)
        values = state[f"{name}.values"]
        layer = SparseLinear(
            linear.in_features, linear.out_features, bias=f"{name}.bias" in state, device="meta", dtype=values.dtype
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"{path}: tensors that the model has no place for: {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    still_meta = [n for n, t in model.state_dict().items() if t.is_meta]
    if still_meta:
        raise ValueError(f"{path}: the checkpoint lacks tensors for {still_meta[:5]}")
    for name in names:
        layer = model.get_submodule(name)
        Sparse24Weight(layer.values, layer.meta)  # validates shapes and metadata
    return names
