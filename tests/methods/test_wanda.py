"""Wanda: |W|·sqrt(Σx²) scores, per-row unstructured and N:M masks, statistics over every calibration token."""

import pytest
import torch
from torch import nn

from sparse_llm.masks import nm_mask, row_topk_mask
from sparse_llm.methods import PhaseTimer, SqNormStats, Wanda, parse_sparsity, wanda_mask


def _stats(x: torch.Tensor) -> SqNormStats:
    stats = SqNormStats(x.shape[-1], x.device)
    for chunk in x.split(3):
        stats.add(chunk)
    return stats


def test_sq_norm_sums_over_all_tokens():
    x = torch.randn(7, 5, 32)
    stats = _stats(x)
    torch.testing.assert_close(stats.sq_norm, x.square().sum((0, 1)), rtol=1e-6, atol=1e-6)
    assert stats.tokens == 35


@pytest.mark.parametrize("sparsity", ["0.5", "2:4", "4:8", "0.6"])
def test_wanda_mask_matches_reference_scores(sparsity):
    pattern = parse_sparsity(sparsity)
    w = torch.randn(13, 64)
    x = torch.randn(40, 64) * torch.linspace(0.1, 3.0, 64)
    stats = _stats(x)
    mask = wanda_mask(w, stats.sq_norm, pattern)
    scores = w.abs() * stats.sq_norm.sqrt()
    expected = nm_mask(scores, pattern.n, pattern.m) if pattern.is_nm else row_topk_mask(scores, pattern.sparsity)
    assert torch.equal(mask, expected)
    if not pattern.is_nm:  # per output row, not per matrix
        assert len(set(mask.sum(1).tolist())) == 1


def test_activations_change_the_mask():
    # Same weights, one input column far louder: Wanda keeps its weights where magnitude would not.
    w = torch.ones(4, 8)
    w[:, 0] = 0.1
    sq_norm = torch.ones(8)
    sq_norm[0] = 1e4
    mask = wanda_mask(w, sq_norm, parse_sparsity("2:4"))
    assert mask[:, 0].all()


def test_wanda_prunes_linear_and_checks_its_inputs():
    linear = nn.Linear(32, 6)
    x = torch.randn(10, 32)
    stats = _stats(x)
    mask = Wanda().prune_linear(linear, parse_sparsity("2:4"), stats, PhaseTimer(), "l")
    assert torch.equal(linear.weight != 0, mask)
    stats.sq_norm[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Wanda().prune_linear(nn.Linear(32, 6), parse_sparsity("2:4"), stats, PhaseTimer(), "l")
    with pytest.raises(TypeError, match="squared input norms"):
        Wanda().prune_linear(nn.Linear(32, 6), parse_sparsity("2:4"), None, PhaseTimer(), "l")
