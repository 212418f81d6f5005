"""CPU tests of the metadata adjustment used when cuSPARSELt keeps other zero positions than our packer."""

import pytest
import torch
from conftest import random_2to4

from sparse_llm.backends.cusparselt import meta_for_values
from sparse_llm.format import check_packed, pack_2to4_reference, unpack_2to4_reference


def _head_with_fillers(w: torch.Tensor, highest: bool) -> torch.Tensor:
    """Another packer's kept values: the non-zeros, then the highest (or lowest) zero positions, column order."""
    n, k = w.shape
    groups = w.reshape(n, k // 4, 4)
    pos = torch.arange(4, dtype=torch.float32)
    score = (groups != 0).float() * 10 + (pos if highest else -pos)
    kept = score.topk(2, dim=-1).indices.sort(-1).values
    return groups.gather(-1, kept).reshape(n, k // 2)


@pytest.mark.parametrize("highest", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adjusted_meta_describes_the_same_weight(highest, dtype):
    w = random_2to4(24, 96, dtype=torch.float32).to(dtype)
    values, meta = pack_2to4_reference(w)
    head = _head_with_fillers(w, highest)
    new_meta = meta_for_values(head, values, meta)
    check_packed(head, new_meta)
    assert torch.equal(unpack_2to4_reference(head, new_meta), w)
    if highest:  # random_2to4 empties some groups, so the other filler rule changes some stored pairs
        assert not torch.equal(head, values) and not torch.equal(new_meta, meta)
    else:  # same rule as our packer: nothing changes
        assert torch.equal(head, values) and torch.equal(new_meta, meta)


def test_unchanged_groups_keep_their_meta_bits():
    w = random_2to4(8, 64, dtype=torch.float32).to(torch.bfloat16)
    values, meta = pack_2to4_reference(w)
    assert torch.equal(meta_for_values(values.clone(), values, meta), meta)
