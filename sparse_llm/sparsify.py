"""Swap ``nn.Linear`` layers of a model for :class:`SparseLinear` and back, by name, without patching classes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sparse_llm.names import as_patterns, matches_any
from sparse_llm.nn import SparseLinear

DEFAULT_EXCLUDE = ("lm_head",)


def _parent_and_child(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def sparsify(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
    masks: dict[str, torch.Tensor] | None = None,
) -> list[str]:
    """Replace targeted ``nn.Linear`` modules with :class:`SparseLinear`; return the replaced names.

    ``include``: None targets every ``nn.Linear``; otherwise names, dotted suffixes (``"q_proj"``) or regexes
    searched in the name (``sparse_llm.names.matches_any``).
    ``exclude``: the same kinds of patterns, applied after ``include`` (default: ``lm_head``).
    ``masks``: optional {name: bool mask} applied before packing. Every targeted weight must then be 2:4: the
    first that is not raises ``ValueError`` naming it, and the model is left untouched (all layers are packed
    before any is swapped). Nothing targeted raises too.
    """
    include = as_patterns(include) if include is not None else None
    exclude = as_patterns(exclude)
    masks = masks or {}
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and (include is None or matches_any(name, include))
        and not matches_any(name, exclude)
    ]
    if not targets:
        raise ValueError(f"sparsify: no nn.Linear matched include={include!r} exclude={exclude!r}")
    unknown = set(masks) - {name for name, _ in targets}
    if unknown:
        raise ValueError(f"sparsify: masks given for layers that are not targeted: {sorted(unknown)}")
    replacements = [(name, SparseLinear.from_linear(module, masks.get(name), name=name)) for name, module in targets]
    for name, new in replacements:
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, new)
    return [name for name, _ in replacements]


def unsparsify(model: nn.Module) -> list[str]:
    """Replace every :class:`SparseLinear` with an equal dense ``nn.Linear``; return the replaced names."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, SparseLinear)]
    for name, module in targets:
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, module.to_linear())
    return [name for name, _ in targets]
