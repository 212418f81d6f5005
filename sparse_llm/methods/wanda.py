"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂ with ‖X_j‖² = Σ x_j² over every calibration token.

Unstructured: the scores are compared within each output row (per-row top-k); N:M: within each group of M
along the input dimension. No weight update.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_llm.methods.base import LayerStats, PhaseTimer, PruningMethod, SparsityPattern, SqNormStats


def wanda_mask(weight: torch.Tensor, sq_norm: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Bool mask (True = keep) of ``weight`` (N, K) scored by |W|·sqrt(``sq_norm``) (fp32, shape (K,))."""
    if sq_norm.shape != (weight.shape[1],):
        raise ValueError(f"sq_norm has shape {tuple(sq_norm.shape)}, expected ({weight.shape[1]},) for the weight")
    scale = sq_norm.float().sqrt()
    if pattern.is_nm:
        from sparse_llm.ops.nm_mask import score_nm_mask

        return score_nm_mask(weight, scale, n=pattern.n, m=pattern.m)
    from sparse_llm.ops.row_topk import score_row_topk_mask

    return score_row_topk_mask(weight, scale, pattern.sparsity)


class Wanda(PruningMethod):
    """Pruning by weights and activations."""

    name = "wanda"
    needs_calibration = True

    def new_stats(self, linear: nn.Linear) -> LayerStats:
        return SqNormStats(linear.in_features, linear.weight.device)

    def prune_linear(
        self,
        linear: nn.Linear,
        pattern: SparsityPattern,
        stats: LayerStats | None,
        timer: PhaseTimer,
        name: str = "",
    ) -> torch.Tensor:
        if not isinstance(stats, SqNormStats):
            raise TypeError(f"{name}: Wanda needs the squared input norms of the layer, got {type(stats).__name__}")
        weight = linear.weight.data
        pattern.check_layer(name, weight)
        stats.check_finite(name)
        with timer.phase("mask"):
            mask = wanda_mask(weight, stats.sq_norm, pattern)
            weight.mul_(mask)
        return mask
