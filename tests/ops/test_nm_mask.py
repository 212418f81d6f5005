"""Fused score + N:M mask / 2:4 pack kernel against its torch reference: bit-exact, ties everywhere."""

import pytest
import torch
from conftest import devices

from sparse_llm import Sparse24Weight
from sparse_llm.format import pack_2to4_reference
from sparse_llm.ops.nm_mask import (
    score_nm_mask,
    score_nm_mask_reference,
    score_pack_24,
    score_pack_24_reference,
    score_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# N not a multiple of BLOCK_N (16); K a multiple of 16 but not of BLOCK_K (256), one and several K blocks.
SHAPES = [(37, 80), (5, 528)]


def tied_weight(n: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Weights on a 4-bit grid (exact ties everywhere), with an all-zero row, -0.0 entries and a zero column."""
    w = (torch.randint(-8, 8, (n, k), device=device) * 0.1).to(dtype)
    w[n // 2] = 0
    w[:, 3] = -0.0
    w[0, :8] = torch.tensor([0.5, -0.5, 0.5, 0.5, -0.0, 0.0, 0.0, 0.25], dtype=dtype)
    return w


def column_scale(k: int, device: str) -> torch.Tensor:
    """A Wanda-like column norm on a coarse grid (more ties), with zero columns (all scores tie at 0)."""
    s = torch.randint(0, 4, (k,), device=device).float() * 0.5
    s[1] = 0.0
    return s


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("scaled", [False, True])
def test_mask_matches_reference_bit_exactly(scaled, nm, shape, dtype, device):
    n, m = nm
    w = tied_weight(*shape, dtype, device)
    scale = column_scale(shape[1], device) if scaled else None
    got = score_nm_mask(w, scale, n, m, impl="triton")
    want = score_nm_mask_reference(w, scale, n, m)
    assert got.dtype == torch.bool and got.shape == w.shape and got.device == w.device
    assert torch.equal(got, want)
    # Independent of the reference: n kept per group, and no pruned score beats a kept one.
    groups = got.reshape(-1, m)
    assert bool((groups.sum(-1) == n).all())
    scores = score_reference(w, scale).reshape(-1, m)
    kept_min = torch.where(groups, scores, torch.inf).amin(-1)
    pruned_max = torch.where(groups, -torch.inf, scores).amax(-1)
    assert bool((kept_min >= pruned_max).all())


def test_ties_keep_the_lower_column():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 2.0, 1.0, -3.0, 3.0, 3.0, 1.0]])
    got = score_nm_mask(w, None, impl="triton")
    assert got.int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0]]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scaled", [False, True])
def test_pack_matches_reference_bit_exactly(scaled, shape, dtype, device):
    w = tied_weight(*shape, dtype, device)
    scale = column_scale(shape[1], device) if scaled else None
    packed = score_pack_24(w, scale, impl="triton")
    values, meta = score_pack_24_reference(w, scale)
    assert isinstance(packed, Sparse24Weight)
    assert packed.values.dtype == dtype and packed.meta.dtype == torch.int16
    assert torch.equal(packed.values.view(INT_VIEW[dtype]), values.view(INT_VIEW[dtype]))
    assert torch.equal(packed.meta, meta)
    # The packed pair is the masked weight, and what the format's own packer makes of it.
    mask = score_nm_mask_reference(w, scale)
    masked = torch.where(mask, w, torch.zeros((), dtype=dtype, device=device))
    assert torch.equal(packed.to_dense(), masked)
    ref_values, ref_meta = pack_2to4_reference(masked)
    assert torch.equal(packed.meta, ref_meta)
    assert torch.equal(packed.values.view(INT_VIEW[dtype]), ref_values.view(INT_VIEW[dtype]))


@pytest.mark.parametrize("device", devices())
def test_default_dispatch_and_torch_impl(device):
    w = tied_weight(16, 64, torch.bfloat16, device)
    scale = column_scale(64, device)
    want = score_nm_mask_reference(w, scale)
    assert torch.equal(score_nm_mask(w, scale), want)
    assert torch.equal(score_nm_mask(w, scale, impl="torch"), want)
    assert torch.equal(score_pack_24(w, scale).meta, score_pack_24(w, scale, impl="torch").meta)


def test_non_contiguous_weight():
    w = tied_weight(48, 32, torch.float32, "cpu")[:, :].t()  # (32, 48), column-major
    assert torch.equal(score_nm_mask(w, None, impl="triton"), score_nm_mask_reference(w, None))
    sliced = tied_weight(20, 96, torch.float16, "cpu")[:, 16:80]  # row stride 96
    assert torch.equal(score_pack_24(sliced, None, impl="triton").meta, score_pack_24_reference(sliced, None)[1])


# The interpreter's numpy warns about the NaN/Inf arithmetic these tests provoke on purpose.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_raises(bad, impl, device):
    w = tied_weight(19, 64, torch.float32, device)
    w[7, 33] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        score_nm_mask(w, None, impl=impl)
    with pytest.raises(ValueError, match="NaN or Inf"):
        score_pack_24(w, column_scale(64, device), impl=impl)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_score_overflow_raises(impl):
    w = torch.full((2, 16), 3.0e38)
    with pytest.raises(ValueError, match="overflows float32"):
        score_nm_mask(w, torch.full((16,), 2.0), impl=impl)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_bad_scale_raises(bad):
    scale = torch.ones(32)
    scale[5] = bad
    with pytest.raises(ValueError, match="scale"):
        score_nm_mask(torch.ones(4, 32), scale, impl="triton")


def test_bad_inputs_raise():
    w = torch.ones(4, 32)
    with pytest.raises(ValueError, match="2-D"):
        score_nm_mask(torch.ones(32))
    with pytest.raises(TypeError, match="dtype"):
        score_nm_mask(w.double())
    with pytest.raises(TypeError, match="dtype"):
        score_nm_mask(w.int())
    with pytest.raises(ValueError, match=r"shape \(K,\)"):
        score_nm_mask(w, torch.ones(31))
    with pytest.raises(TypeError, match="scale dtype"):
        score_nm_mask(w, torch.ones(32, dtype=torch.float64))
    with pytest.raises(ValueError, match="not divisible by m=8"):
        score_nm_mask(torch.ones(4, 36), None, 2, 8)
    with pytest.raises(ValueError, match="power of two"):
        score_nm_mask(torch.ones(4, 36), None, 1, 3, impl="triton")
    with pytest.raises(ValueError, match="0 < n < m"):
        score_nm_mask(w, None, 4, 4)
    with pytest.raises(ValueError, match="multiple of 16"):
        score_pack_24(torch.ones(4, 40))
    with pytest.raises(ValueError, match="impl"):
        score_nm_mask(w, impl="cuda")


def test_custom_ops_pass_opcheck():
    w = tied_weight(5, 32, torch.bfloat16, "cpu")
    scale = column_scale(32, "cpu")
    torch.library.opcheck(torch.ops.sparse_llm.score_nm_mask.default, (w, scale, 2, 4))
    torch.library.opcheck(torch.ops.sparse_llm.score_pack_24.default, (w, None))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_and_subnormal_on_gpu(dtype):
    # A real-width layer, and scales that push products into fp32 subnormals: the kernel must not flush them.
    w = (torch.randint(-8, 8, (300, 4096), device="cuda") * 0.1).to(dtype)
    scale = torch.rand(4096, device="cuda") * 1e-37
    assert torch.equal(score_nm_mask(w, scale), score_nm_mask_reference(w, scale))
    packed = score_pack_24(w, scale)
    values, meta = score_pack_24_reference(w, scale)
    assert torch.equal(packed.meta, meta)
    assert torch.equal(packed.values.view(INT_VIEW[dtype]), values.view(INT_VIEW[dtype]))
