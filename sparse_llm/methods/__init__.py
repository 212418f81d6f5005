"""Pruning methods by name: ``magnitude``, ``wanda``, ``sparsegpt``.

``get_method("wanda")`` returns a fresh instance; ``register_method`` adds a new one (a :class:`PruningMethod`
subclass) under its ``name``.
"""

from __future__ import annotations

from sparse_llm.methods.base import (
    HessianStats,
    LayerStats,
    PhaseTimer,
    PruningMethod,
    SparsityPattern,
    SqNormStats,
    parse_sparsity,
)
from sparse_llm.methods.magnitude import Magnitude, magnitude_mask
from sparse_llm.methods.sparsegpt import SparseGPT, sparsegpt_prune
from sparse_llm.methods.wanda import Wanda, wanda_mask

METHODS: dict[str, type[PruningMethod]] = {}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Register a method class under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, PruningMethod)) or not cls.name:
        raise TypeError(f"{cls!r} is not a PruningMethod subclass with a name")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str | PruningMethod, **options) -> PruningMethod:
    """An instance of the method registered as ``name`` (case-insensitive); an instance is returned unchanged."""
    if isinstance(name, PruningMethod):
        return name
    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[key](**options)


for _cls in (Magnitude, Wanda, SparseGPT):
    register_method(_cls)

__all__ = [
    "METHODS",
    "HessianStats",
    "LayerStats",
    "Magnitude",
    "PhaseTimer",
    "PruningMethod",
    "SparseGPT",
    "SparsityPattern",
    "SqNormStats",
    "Wanda",
    "get_method",
    "magnitude_mask",
    "parse_sparsity",
    "register_method",
    "sparsegpt_prune",
    "wanda_mask",
]
