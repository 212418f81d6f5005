"""SparseGPT (Frantar & Alistarh, 2023): mask selection by w²/[H⁻¹]_jj² and an OBS update of the kept weights.

Faithful to the reference algorithm: ``H = 2/n Σ x xᵀ`` in fp32; dead inputs (H_jj = 0) get H_jj = 1 and their
weight column zeroed; damping ``percdamp·mean(diag H)`` on the diagonal; ``U`` = upper Cholesky factor of H⁻¹;
columns processed in blocks of ``blocksize``. Unstructured masks are chosen per block (the smallest w²/U_jj² of
the whole block); N:M masks per group of M columns, when the sweep reaches the group (after the updates from the
columns before it). Every pruned column's error is spread over the later columns of its row.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from sparse_llm.methods.base import (
    HessianStats,
    LayerStats,
    PhaseTimer,
    PruningMethod,
    SparsityPattern,
    exact_flat_prune_mask,
)

# How many times the damping is multiplied by 10 when the Cholesky factorization fails.
MAX_DAMPING_RETRIES = 6


def _keep_largest_(keep: torch.Tensor, scores: torch.Tensor, n: int) -> None:
    """Set ``keep`` (M, N) to the ``n`` largest of each column of ``scores`` (M, N); ties keep the lower index.

    ``masks.nm_mask`` on one group, written in place and without its finiteness check: that check syncs the GPU,
    and this runs every M columns (the final weights are checked once per layer instead).
    """
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices[:n]
    keep.zero_().scatter_(0, order, True)


def inverse_hessian_cholesky(hessian: torch.Tensor, percdamp: float, name: str = "") -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = ``percdamp``·mean(diag H); returns (U, percdamp used).

    When a factorization fails (H not positive definite in floating point), retry with 10x the damping and warn;
    after ``MAX_DAMPING_RETRIES`` failures raise a RuntimeError naming the layer.
    """
    mean_diag = torch.diagonal(hessian).mean()
    diag = torch.arange(hessian.shape[0], device=hessian.device)
    damping = percdamp
    for _ in range(MAX_DAMPING_RETRIES + 1):
        damped = hessian.clone()
        damped[diag, diag] += damping * mean_diag
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, damping
        warnings.warn(
            f"{name or 'layer'}: SparseGPT's Cholesky factorization failed with damping {damping:g}·mean(diag H); "
            f"retrying with {damping * 10:g}",
            RuntimeWarning,
            stacklevel=2,
        )
        damping *= 10
    raise RuntimeError(
        f"{name or 'layer'}: SparseGPT's Hessian is not positive definite even with damping {damping / 10:g}; "
        "the calibration activations are degenerate (too few tokens, or overflow)"
    )


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: SparsityPattern,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Prune ``weight`` (N, K) given its input Hessian (K, K) (consumed); returns (new fp32 weight, keep mask, info).

    ``info`` holds the damping used, the dead-input count and the OBS loss estimate Σ (w - q)² / U_jj² / 2.
    """
    n_rows, k = weight.shape
    if hessian.shape != (k, k):
        raise ValueError(
            f"{name}: Hessian shape {tuple(hessian.shape)} does not match the weight {tuple(weight.shape)}"
        )
    if pattern.is_nm and blocksize % pattern.m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M = {pattern.m} for N:M SparseGPT")
    w = weight.detach().float().clone()
    hessian = hessian.float()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv, damping = inverse_hessian_cholesky(hessian, percdamp, name)
    del hessian

    keep = torch.ones_like(w, dtype=torch.bool)
    losses = torch.zeros(n_rows, dtype=torch.float32, device=w.device)
    zero = w.new_zeros(())
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        # The block is held transposed, (columns, N): each column and each trailing update is contiguous memory
        # (a strided in-place update of (N, columns) runs several times slower, on CPUs above all).
        w1 = w[:, i1:i2].T.contiguous()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        inv_d1 = 1.0 / torch.diagonal(hinv1).unsqueeze(1)
        # drop1 = 1/d where pruned, 0 where kept: the column's error (w - q)/d is w·drop1. Few launches per column
        # matter: on a GPU the sweep is bound by issuing them.
        drop1 = torch.empty_like(w1)
        if pattern.is_nm:
            keep1 = torch.empty_like(w1, dtype=torch.bool)
            inv_d1_sq = inv_d1.square()
        else:
            scores = (w1.square() * inv_d1.square()).T  # (N, columns): flat order = the weight's row-major order
            keep1 = exact_flat_prune_mask(scores, pattern.sparsity).T
            torch.where(keep1, zero, inv_d1, out=drop1)
        for i in range(i2 - i1):
            if pattern.is_nm and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                _keep_largest_(keep1[group], w1[group].square().mul_(inv_d1_sq[group]), pattern.n)
                torch.where(keep1[group], zero, inv_d1[group], out=drop1[group])
            torch.mul(w1[i], drop1[i], out=err1[i])
            # OBS update of this and the later columns of the block (column i becomes q: w where kept, ~0 where not).
            w1[i:].addr_(hinv1[i, i:], err1[i], alpha=-1.0)
        w[:, i1:i2] = (w1 * keep1).T
        keep[:, i1:i2] = keep1.T
        losses += err1.square().sum(0) / 2
        w[:, i2:].addmm_(err1.T, hinv[i1:i2, i2:], alpha=-1.0)
    if not torch.isfinite(w).all():
        raise ValueError(f"{name}: SparseGPT produced NaN or Inf weights (non-finite weights or activations)")
    info = {"damping": damping, "dead_inputs": int(dead.sum()), "obs_loss": float(losses.sum())}
    return w, keep, info


class SparseGPT(PruningMethod):
    """SparseGPT one-shot pruning with the OBS weight update."""

    name = "sparsegpt"
    needs_calibration = True

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01):
        if blocksize <= 0:
            raise ValueError(f"blocksize must be positive, got {blocksize}")
        if not percdamp > 0:
            raise ValueError(f"percdamp must be positive, got {percdamp}")
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.last_info: dict = {}

    def new_stats(self, linear: nn.Linear) -> LayerStats:
        return HessianStats(linear.in_features, linear.weight.device)

    def prune_linear(
        self,
        linear: nn.Linear,
        pattern: SparsityPattern,
        stats: LayerStats | None,
        timer: PhaseTimer,
        name: str = "",
    ) -> torch.Tensor:
        if not isinstance(stats, HessianStats):
            raise TypeError(f"{name}: SparseGPT needs the input Hessian of the layer, got {type(stats).__name__}")
        pattern.check_layer(name, linear.weight)
        stats.check_finite(name)
        # Mask selection is interleaved with the column sweep (each N:M group is chosen after the updates from the
        # columns before it), so it is timed together with the update.
        with timer.phase("update"):
            new_weight, keep, self.last_info = sparsegpt_prune(
                linear.weight.data, stats.hessian(), pattern, self.blocksize, self.percdamp, name
            )
            linear.weight.data.copy_(new_weight)
        return keep
