"""Mask helpers (plain torch): N:M along the last dim and exact per-row top-k.

Tie rule, everywhere in the package: among equal scores the LOWER column index is kept. Both helpers get it from
a stable descending sort, which keeps equal scores in column order. The fused Triton kernels in ``sparse_llm.ops``
match these functions bit-exactly.
"""

from __future__ import annotations

import math

import torch


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() < 1 or scores.shape[-1] == 0:
        raise ValueError(f"scores must have a non-empty last dimension, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf: a mask computed from them would be meaningless")


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` largest scores of every group of ``m`` consecutive entries along the last dim.

    Returns a bool tensor of the same shape (True = keep). Equal scores keep the lower index.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"N:M needs integers 0 < n < m, got n={n}, m={m}")
    _check_scores(scores)
    k = scores.shape[-1]
    if k % m:
        raise ValueError(f"last dim {k} (shape {tuple(scores.shape)}) is not divisible by m={m}")
    groups = scores.reshape(-1, k // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def pruned_count(k: int, sparsity: float) -> int:
    """How many of ``k`` entries a row loses at ``sparsity``: round half up of ``sparsity * k``."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    return min(k, math.floor(sparsity * k + 0.5))


def row_topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per row (last dim), prune exactly ``pruned_count(K, sparsity)`` smallest scores; True = keep.

    Equal scores keep the lower column index (the higher ones are pruned first).
    """
    _check_scores(scores)
    k = scores.shape[-1]
    kept = k - pruned_count(k, sparsity)
    rows = scores.reshape(-1, k)
    order = torch.sort(rows, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep.scatter_(-1, order[:, :kept], True)
    return keep.reshape(scores.shape)


def is_nm_sparse(w: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` along the last dim of ``w`` holds at most ``n`` non-zeros."""
    if w.shape[-1] % m:
        return False
    return bool(((w.reshape(-1, m) != 0).sum(-1) <= n).all())
