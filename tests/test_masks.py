import pytest
import torch

from sparse_llm.masks import is_nm_sparse, nm_mask, pruned_count, row_topk_mask


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("shape", [(3, 16), (7, 40), (2, 3, 24)])
def test_nm_mask_keeps_n_largest_per_group(shape, n, m):
    if shape[-1] % m:
        pytest.skip("K not divisible by m")
    scores = torch.randn(shape)
    keep = nm_mask(scores, n, m)
    groups = keep.reshape(-1, m)
    assert (groups.sum(-1) == n).all()
    s = scores.reshape(-1, m)
    kept_min = torch.where(groups, s, torch.inf).amin(-1)
    dropped_max = torch.where(~groups, s, -torch.inf).amax(-1)
    assert (kept_min >= dropped_max).all()


def test_nm_mask_ties_keep_lower_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 2.0]])
    assert nm_mask(scores).tolist() == [[True, True, False, False, False, True, True, False]]


def test_row_topk_prunes_exact_count_with_ties_keeping_lower_index():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 1.0, 5.0]])
    keep = row_topk_mask(scores, 0.5)  # prune 3: the three highest-index 1.0s
    assert keep.tolist() == [[True, True, False, False, False, True]]


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("k", [16, 37, 100])
def test_row_topk_exact_per_row_counts(sparsity, k):
    scores = (torch.randint(0, 5, (9, k)) * 0.5).float()  # many exact ties
    keep = row_topk_mask(scores, sparsity)
    assert (keep.sum(-1) == k - pruned_count(k, sparsity)).all()
    kept_min = torch.where(keep, scores, torch.inf).amin(-1)
    dropped_max = torch.where(~keep, scores, -torch.inf).amax(-1)
    assert (kept_min >= dropped_max).all()


def test_pruned_count_rounds_half_up():
    assert pruned_count(3, 0.5) == 2 and pruned_count(5, 0.5) == 3 and pruned_count(10, 0.5) == 5


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: nm_mask(torch.randn(2, 10), 2, 4), "not divisible"),
        (lambda: nm_mask(torch.randn(2, 8), 4, 4), "0 < n < m"),
        (lambda: nm_mask(torch.tensor([[1.0, float("nan"), 0.0, 1.0]])), "NaN"),
        (lambda: row_topk_mask(torch.randn(2, 8), 1.0), r"sparsity must be in \(0, 1\)"),
        (lambda: row_topk_mask(torch.randn(2, 8), 0.0), r"sparsity must be in \(0, 1\)"),
        (lambda: row_topk_mask(torch.tensor([[float("inf"), 1.0]]), 0.5), "Inf"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_is_nm_sparse():
    w = torch.randn(4, 16)
    assert not is_nm_sparse(w)
    assert is_nm_sparse(w * nm_mask(w.abs()))
