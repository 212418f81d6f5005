"""Backends of :class:`sparse_llm.SparseLinear`: an ordered list of small dispatch entries.

For each call the first entry whose ``applies(module, x2d)`` is true runs. The environment variable
``SPARSE_LLM_BACKEND`` (or the ``backend`` argument of :func:`linear`, or ``SparseLinear.backend``) forces one by
name; :func:`select` tells which entry a call would take. The reference entry is last and always applies: it
unpacks the weight and runs a dense matmul, so every device works (slowly).

Backend modules are imported lazily inside the entries: importing the package never builds or loads an extension.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_llm.format import unpack_2to4_reference

ENV_VAR = "SPARSE_LLM_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One way of computing ``x @ W.T + b`` for a SparseLinear ``module`` and a 2-D input ``x``."""

    name: str
    applies: Callable[[torch.nn.Module, torch.Tensor], bool]
    run: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def _reference_run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight = unpack_2to4_reference(module.values, module.meta)
    return F.linear(x, weight, module.bias)


REFERENCE = Backend("reference", applies=lambda module, x: True, run=_reference_run)

# Ordered: the first entry that applies wins. GPU entries are inserted before the reference.
BACKENDS: list[Backend] = [REFERENCE]


def names() -> list[str]:
    """Names of the registered backends, in dispatch order."""
    return [b.name for b in BACKENDS]


def get(name: str) -> Backend:
    """The backend called ``name``; a clear error lists the known ones."""
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ValueError(f"unknown SparseLinear backend {name!r}; known: {', '.join(names())}")


def select(module: torch.nn.Module, x: torch.Tensor, backend: str | None = None) -> Backend:
    """The backend that a call with the 2-D input ``x`` takes (forced by argument, then env var, then order)."""
    forced = backend or getattr(module, "backend", None) or os.environ.get(ENV_VAR) or None
    if forced:
        chosen = get(forced)
        if not chosen.applies(module, x):
            raise RuntimeError(
                f"SparseLinear backend {forced!r} was forced but cannot run this call "
                f"(input {tuple(x.shape)} {x.dtype} on {x.device})"
            )
        return chosen
    for candidate in BACKENDS:
        if candidate.applies(module, x):
            return candidate
    raise RuntimeError("no SparseLinear backend applies")  # unreachable: the reference always applies


def linear(module: torch.nn.Module, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``F.linear(x, W, b)`` for a SparseLinear: flattens leading dims, dispatches, restores the shape."""
    x2d = x.reshape(-1, x.shape[-1])
    out = select(module, x2d, backend).run(module, x2d)
    return out.reshape(*x.shape[:-1], out.shape[-1])
