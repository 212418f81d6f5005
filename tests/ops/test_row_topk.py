"""Fused score + per-row top-k selection kernel against its torch reference (a full stable sort): bit-exact."""

import pytest
import torch
from conftest import devices

from sparse_llm.masks import pruned_count
from sparse_llm.ops.nm_mask import score_reference
from sparse_llm.ops.row_topk import score_row_topk_mask, score_row_topk_mask_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tied_weight(n: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Weights on a 4-bit grid (exact ties everywhere), an all-zero row, an all-equal row, -0.0 entries."""
    w = (torch.randint(-8, 8, (n, k), device=device) * 0.1).to(dtype)
    w[1] = 0
    w[2] = -0.5
    w[:, 3] = -0.0
    return w


def check_selection(mask: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, sparsity: float) -> None:
    """Independent of the reference: the exact count per row, and no pruned score beats a kept one."""
    k = w.shape[1]
    assert bool((mask.sum(-1) == k - pruned_count(k, sparsity)).all())
    scores = score_reference(w, scale)
    kept_min = torch.where(mask, scores, torch.inf).amin(-1)
    pruned_max = torch.where(mask, -torch.inf, scores).amax(-1)
    assert bool((kept_min >= pruned_max).all())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.01, 0.99])
def test_resident_matches_reference_bit_exactly(sparsity, scaled, dtype, device):
    w = tied_weight(9, 80, dtype, device)  # K = 80: the register row is padded to 128
    scale = torch.randint(0, 4, (80,), device=device).float() * 0.5 if scaled else None
    got = score_row_topk_mask(w, scale, sparsity, impl="triton")
    assert got.dtype == torch.bool and got.shape == w.shape and got.device == w.device
    assert torch.equal(got, score_row_topk_mask_reference(w, scale, sparsity))
    check_selection(got, w, scale, sparsity)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_chunked_matches_reference_bit_exactly(sparsity, dtype, device):
    # 80 columns in chunks of 32: two full chunks and a partial one; ranks carried across chunks.
    w = tied_weight(7, 80, dtype, device)
    scale = torch.rand(80, device=device) * 2
    got = score_row_topk_mask(w, scale, sparsity, impl="triton", max_resident_k=0, chunk_k=32)
    assert torch.equal(got, score_row_topk_mask_reference(w, scale, sparsity))
    check_selection(got, w, scale, sparsity)


@pytest.mark.parametrize("device", devices())
def test_continuous_scores_and_default_dispatch(device):
    # Distinct scores: the bisection stops early once some threshold has exactly K - pruned scores above it.
    w = torch.randn(11, 208, device=device)
    scale = torch.rand(208, device=device)
    want = score_row_topk_mask_reference(w, scale, 0.6)
    assert torch.equal(score_row_topk_mask(w, scale, 0.6, impl="triton"), want)
    assert torch.equal(score_row_topk_mask(w, scale, 0.6), want)


def test_ties_keep_the_lower_columns():
    w = torch.tensor([[1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    # Prune 8 of 16: the 3 largest stay, then the 5 lowest columns among the twelve 1.0s.
    got = score_row_topk_mask(w, None, 0.5, impl="triton")
    assert got.int().tolist() == [[1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0]]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns about the NaN arithmetic
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("max_resident_k", [16384, 0])
def test_non_finite_weight_raises(max_resident_k, bad, device):
    w = torch.randn(5, 48, device=device)
    w[3, 17] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        score_row_topk_mask(w, None, 0.5, impl="triton", max_resident_k=max_resident_k, chunk_k=16)
    with pytest.raises(ValueError, match="NaN or Inf"):
        score_row_topk_mask(w, None, 0.5, impl="torch")


def test_bad_inputs_raise():
    w = torch.ones(4, 32)
    for sparsity in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="sparsity"):
            score_row_topk_mask(w, None, sparsity, impl="triton")
    with pytest.raises(ValueError, match="scale"):
        score_row_topk_mask(w, -torch.ones(32), 0.5, impl="triton")
    with pytest.raises(ValueError, match="chunk_k"):
        score_row_topk_mask(w, None, 0.5, impl="triton", max_resident_k=0, chunk_k=24)
    with pytest.raises(TypeError, match="dtype"):
        score_row_topk_mask(w.half().to(torch.float64), None, 0.5, impl="triton")


def test_empty_rows():
    assert score_row_topk_mask(torch.ones(0, 32), None, 0.5, impl="triton").shape == (0, 32)


def test_custom_op_passes_opcheck():
    w = tied_weight(3, 32, torch.float16, "cpu")
    torch.library.opcheck(torch.ops.sparse_llm.score_row_topk_mask.default, (w, None, 16, 16384, 4096))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(257, 4096), (64, 11008), (16, 28672)])
def test_real_widths_on_gpu(shape, dtype):
    # Llama widths, both kernels (28672 columns exceed MAX_RESIDENT_K), tied and continuous scores.
    for w in (
        (torch.randint(-8, 8, shape, device="cuda") * 0.1).to(dtype),
        torch.randn(shape, device="cuda").to(dtype),
    ):
        scale = torch.rand(shape[1], device="cuda")
        want = score_row_topk_mask_reference(w, scale, 0.5)
        assert torch.equal(score_row_topk_mask(w, scale, 0.5), want)
        assert torch.equal(score_row_topk_mask(w, scale, 0.5, max_resident_k=0), want)
