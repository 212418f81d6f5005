"""Σx² accumulation kernel against its torch reference: bit-exact where fp32 sums are exact, else tight."""

import pytest
import torch
from conftest import devices

from sparse_llm.ops.act_norm import accumulate_sq_norm_, accumulate_sq_norm_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Leading shapes of any rank; K a multiple of 16 but not of BLOCK_K (256); rows not a multiple of BLOCK_M (32).
SHAPES = [(3, 41, 80), (200, 48), (1, 16), (2, 5, 7, 528)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_sums_match_bit_exactly(shape, dtype, device):
    # Multiples of 1/8 below 1: every square and partial sum is exact in fp32, whatever the summation order.
    x = (torch.randint(-8, 8, shape, device=device) * 0.125).to(dtype)
    start = torch.randint(0, 64, (shape[-1],), device=device).float() * 0.25
    acc = start.clone()
    out = accumulate_sq_norm_(acc, x, impl="triton")
    assert out is acc
    assert torch.equal(acc, accumulate_sq_norm_reference(start.clone(), x))
    assert torch.equal(acc, start + x.double().square().reshape(-1, shape[-1]).sum(0).float())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_activations_within_fp32_rounding(dtype, device):
    x = (torch.randn(4, 300, 96, device=device) * 3).to(dtype)
    acc = torch.zeros(96, device=device)
    accumulate_sq_norm_(acc, x, impl="triton")
    accumulate_sq_norm_(acc, x[:2], impl="triton")  # accumulates across calls
    want = x.double().square().sum((0, 1)) + x[:2].double().square().sum((0, 1))
    rel = ((acc.double() - want).abs() / want).max().item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_and_empty_inputs(device):
    x = torch.randn(64, 40, device=device).t()  # (40, 64), column-major rows
    acc = torch.zeros(64, device=device)
    accumulate_sq_norm_(acc, x, impl="triton")
    want = x.double().square().sum(0)
    assert ((acc.double() - want).abs() / want).max().item() < 1e-5
    before = acc.clone()
    accumulate_sq_norm_(acc, x[:0], impl="triton")
    assert torch.equal(acc, before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns about the NaN arithmetic
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_non_finite_raises_and_leaves_acc_unchanged(bad, impl, device):
    x = torch.randn(70, 48, device=device)
    x[33, 5] = bad  # 1e30 is finite, but its square overflows fp32
    acc = torch.rand(48, device=device)
    before = acc.clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        accumulate_sq_norm_(acc, x, impl=impl)
    assert torch.equal(acc, before)


def test_unchecked_mode_propagates_non_finite_into_acc():
    x = torch.randn(70, 48)
    x[33, 5] = float("nan")
    acc = torch.zeros(48)
    accumulate_sq_norm_(acc, x, impl="triton", check_finite=False)
    assert torch.isnan(acc[5]) and bool(torch.isfinite(acc[torch.arange(48) != 5]).all())


def test_bad_inputs_raise():
    x = torch.randn(4, 32)
    with pytest.raises(ValueError, match="float32"):
        accumulate_sq_norm_(torch.zeros(32, dtype=torch.float16), x)
    with pytest.raises(ValueError, match="float32"):
        accumulate_sq_norm_(torch.zeros(2, 32), x)
    with pytest.raises(ValueError, match="K = 16"):
        accumulate_sq_norm_(torch.zeros(16), x)
    with pytest.raises(TypeError, match="dtype"):
        accumulate_sq_norm_(torch.zeros(32), x.double())
    with pytest.raises(ValueError, match="impl"):
        accumulate_sq_norm_(torch.zeros(32), x, impl="numpy")


def test_custom_op_passes_opcheck():
    args = (torch.zeros(32), torch.randn(3, 5, 32), True)
    torch.library.opcheck(torch.ops.sparse_llm.accumulate_sq_norm.default, args)


@pytest.mark.gpu
def test_deterministic_on_gpu():
    # Calibration-sized activation: many row splits; two runs must give the same bits.
    x = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16)
    first = accumulate_sq_norm_(torch.zeros(4096, device="cuda"), x)
    second = accumulate_sq_norm_(torch.zeros(4096, device="cuda"), x)
    assert torch.equal(first, second)
    want = x.double().square().sum(0)
    assert ((first.double() - want).abs() / want).max().item() < 1e-5
