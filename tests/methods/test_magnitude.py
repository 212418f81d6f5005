"""Magnitude pruning and the sparsity pattern parser."""

import pytest
import torch
from torch import nn

from sparse_llm.masks import nm_mask
from sparse_llm.methods import Magnitude, PhaseTimer, SparsityPattern, magnitude_mask, parse_sparsity
from sparse_llm.methods.base import exact_flat_prune_mask


@pytest.mark.parametrize(
    "value, expected",
    [(0.5, SparsityPattern(0.5)), ("0.7", SparsityPattern(0.7)), ("2:4", SparsityPattern(0.5, 2, 4)),
     ("4:8", SparsityPattern(0.5, 4, 8)), ("1:4", SparsityPattern(0.75, 1, 4))],
)  # fmt: skip
def test_parse_sparsity(value, expected):
    assert parse_sparsity(value) == expected


@pytest.mark.parametrize("value", [0, 1, 1.0, -0.1, 1.5, "0", "1", float("nan"), "4:2", "0:4", "2:2", "a:b", "half"])
def test_parse_sparsity_rejects(value):
    with pytest.raises(ValueError, match="sparsity"):
        parse_sparsity(value)


def test_parse_sparsity_rejects_bool():
    with pytest.raises(TypeError):
        parse_sparsity(True)


@pytest.mark.parametrize("shape, sparsity", [((7, 48), 0.5), ((33, 16), 0.3), ((5, 96), 0.9)])
def test_unstructured_is_one_threshold_with_exact_count(shape, sparsity):
    w = torch.randn(shape)
    mask = magnitude_mask(w, SparsityPattern(sparsity))
    pruned = w.numel() - int(mask.sum())
    assert pruned == int(sparsity * w.numel() + 0.5)
    # One threshold for the whole matrix: every kept |w| is >= every pruned |w|.
    assert w.abs()[mask].min() >= w.abs()[~mask].max()
    # Not per row: rows end up with different counts on random data.
    assert len(set(mask.sum(1).tolist())) > 1


def test_unstructured_ties_keep_lower_flat_index():
    # All-equal magnitudes on a 4-bit grid (like the embedded model): the first half in flat order is kept.
    w = torch.full((4, 8), 0.25)
    w[1, 3] = -0.25
    mask = magnitude_mask(w, SparsityPattern(0.5))
    assert torch.equal(mask.flatten(), torch.arange(32) < 16)
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    assert exact_flat_prune_mask(scores, 0.5).tolist() == [True, True, False, False, False, True]


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_nm_is_bit_exact_with_reference_masks(n, m):
    w = torch.randn(19, 64)
    w[3, :8] = 0.5  # ties inside groups
    mask = magnitude_mask(w, SparsityPattern(1 - n / m, n, m))
    assert torch.equal(mask, nm_mask(w.abs(), n, m))
    assert torch.equal(mask.reshape(19, -1, m).sum(-1), torch.full((19, 64 // m), n))


def test_magnitude_prunes_linear_in_place():
    linear = nn.Linear(32, 9)
    before = linear.weight.detach().clone()
    mask = Magnitude().prune_linear(linear, parse_sparsity("2:4"), None, PhaseTimer(), "layer")
    assert torch.equal(linear.weight.detach(), before * mask)
    assert Magnitude.needs_calibration is False


def test_nm_needs_k_divisible_by_m():
    linear = nn.Linear(20, 4)
    with pytest.raises(ValueError, match="divisible by 8"):
        Magnitude().prune_linear(linear, parse_sparsity("4:8"), None, PhaseTimer(), "model.layers.0.mlp.up_proj")
