"""Magnitude pruning: score |W|; unstructured with one threshold per matrix, N:M along the input dim."""

from __future__ import annotations

import torch
from torch import nn

from sparse_llm.methods.base import LayerStats, PhaseTimer, PruningMethod, SparsityPattern, exact_flat_prune_mask


def magnitude_mask(weight: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Bool mask (True = keep) of ``weight`` (N, K) by |W|: N:M per group along K, else one global threshold."""
    if pattern.is_nm:
        from sparse_llm.ops.nm_mask import score_nm_mask

        return score_nm_mask(weight, None, n=pattern.n, m=pattern.m)
    return exact_flat_prune_mask(weight.abs(), pattern.sparsity)


class Magnitude(PruningMethod):
    """Prune the smallest weights by absolute value; needs no calibration data."""

    name = "magnitude"
    needs_calibration = False

    def prune_linear(
        self,
        linear: nn.Linear,
        pattern: SparsityPattern,
        stats: LayerStats | None,
        timer: PhaseTimer,
        name: str = "",
    ) -> torch.Tensor:
        weight = linear.weight.data
        pattern.check_layer(name, weight)
        with timer.phase("mask"):
            mask = magnitude_mask(weight, pattern)
            weight.mul_(mask)
        return mask
