"""SparseGPT: exact masks, the OBS update lowers the reconstruction error, dead inputs, damping retries."""

import pytest
import torch
from torch import nn

from sparse_llm.masks import nm_mask
from sparse_llm.methods import HessianStats, PhaseTimer, SparseGPT, parse_sparsity, sparsegpt_prune
from sparse_llm.methods.base import exact_flat_prune_mask
from sparse_llm.methods.sparsegpt import inverse_hessian_cholesky


def _correlated_inputs(tokens: int, k: int) -> torch.Tensor:
    """Inputs with correlated columns and uneven scales, like a transformer's activations."""
    mix = torch.randn(k, k) / k**0.5 + torch.eye(k)
    return (torch.randn(tokens, k) @ mix) * torch.linspace(0.2, 2.0, k)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    stats = HessianStats(x.shape[-1], x.device)
    for chunk in x.split(50):
        stats.add(chunk)
    return stats.hessian()


def test_hessian_is_two_over_n_xtx():
    x = torch.randn(120, 24)
    torch.testing.assert_close(_hessian(x), 2 / 120 * x.T @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparsity", ["0.5", "2:4", "4:8", "0.7"])
@pytest.mark.parametrize("k", [96, 272])  # K not a multiple of the 128-column block
def test_update_beats_same_mask_without_update(sparsity, k):
    pattern = parse_sparsity(sparsity)
    w = torch.randn(21, k)
    x = _correlated_inputs(512, k)
    new_w, keep, info = sparsegpt_prune(w, _hessian(x), pattern)
    assert torch.equal(new_w != 0, keep)
    error_update = torch.linalg.norm(x @ (w - new_w).T)
    error_mask_only = torch.linalg.norm(x @ (w - w * keep).T)
    assert error_update < 0.95 * error_mask_only
    if pattern.is_nm:
        assert torch.equal(keep.reshape(21, -1, pattern.m).sum(-1), torch.full((21, k // pattern.m), pattern.n))
    else:  # exact count in every 128-column block
        for start in range(0, k, 128):
            block = keep[:, start : start + 128]
            assert block.numel() - int(block.sum()) == int(pattern.sparsity * block.numel() + 0.5)
    assert info["dead_inputs"] == 0 and info["damping"] == 0.01


@pytest.mark.parametrize("sparsity", ["2:4", "0.5"])
def test_uncorrelated_inputs_give_activation_weighted_mask_and_no_update(sparsity):
    # Orthogonal input columns: H is diagonal, so U_jj² = 1/(H_jj + λ), the score w²/U_jj² = w²·(H_jj + λ), and no
    # pruned weight can be compensated by another column: the result is W masked by that score, unchanged.
    pattern = parse_sparsity(sparsity)
    k = 32
    q, _ = torch.linalg.qr(torch.randn(256, k))
    scales = torch.logspace(-1, 1, k)[torch.randperm(k)]
    x = q * scales
    w = torch.randn(9, k)
    hessian = _hessian(x)
    new_w, keep, _ = sparsegpt_prune(w, hessian.clone(), pattern)
    diag = torch.diagonal(hessian)
    scores = w.square() * (diag + 0.01 * diag.mean())
    expected = nm_mask(scores, 2, 4) if pattern.is_nm else exact_flat_prune_mask(scores, 0.5)
    assert torch.equal(keep, expected)
    torch.testing.assert_close(new_w, w * keep, rtol=1e-4, atol=1e-4)


def test_dead_inputs_zero_their_columns():
    x = _correlated_inputs(300, 32)
    x[:, 5] = 0
    w = torch.randn(6, 32)
    new_w, keep, info = sparsegpt_prune(w, _hessian(x), parse_sparsity("2:4"))
    assert info["dead_inputs"] == 1
    assert (new_w[:, 5] == 0).all() and torch.isfinite(new_w).all()


def test_cholesky_failure_retries_with_more_damping():
    h = torch.tensor([[1.0, 3.0], [3.0, 1.0]])  # indefinite: eigenvalues 4 and -2; damping 10 makes it definite
    with pytest.warns(RuntimeWarning, match="retrying"):
        upper, damping = inverse_hessian_cholesky(h, 0.01, "layer")
    assert damping == pytest.approx(10.0)
    assert torch.isfinite(upper).all()


def test_cholesky_never_succeeding_raises_clearly():
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="not positive definite"):
        inverse_hessian_cholesky(-torch.eye(4), 0.01, "model.layers.3.mlp.down_proj")


def test_sparsegpt_prunes_linear_in_place():
    linear = nn.Linear(64, 10)
    stats = HessianStats(64, torch.device("cpu"))
    stats.add(_correlated_inputs(200, 64))
    keep = SparseGPT().prune_linear(linear, parse_sparsity("4:8"), stats, PhaseTimer(), "l")
    assert torch.equal(linear.weight != 0, keep)
    with pytest.raises(ValueError, match="blocksize"):
        SparseGPT(blocksize=126).prune_linear(nn.Linear(64, 10), parse_sparsity("4:8"), stats, PhaseTimer(), "l")
    with pytest.raises(TypeError, match="Hessian"):
        SparseGPT().prune_linear(nn.Linear(64, 10), parse_sparsity("4:8"), None, PhaseTimer(), "l")
