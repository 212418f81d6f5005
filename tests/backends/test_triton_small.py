"""The small-M Triton kernels against their torch reference: on the CPU under TRITON_INTERPRET=1, on a GPU if any.

Odd shapes (N not a multiple of BLOCK_N, K not a multiple of BLOCK_K, M not a multiple of BLOCK_M), split-K,
bias, 3-D and strided inputs, and a strided ``values`` view (as when it is the first half of cuSPARSELt's buffer).
The interpreter's ``tl.dot`` mishandles bfloat16 (numpy has no bf16), so the dot kernel is checked on the CPU in
float16 only; the GPU tests cover both dtypes.
"""

import pytest
import torch
from conftest import random_2to4

from sparse_llm.backends.triton_small import SmallConfig, default_config, spmm24_small, spmm24_small_reference
from sparse_llm.format import pack_2to4_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _packed(n: int, k: int, dtype: torch.dtype):
    return pack_2to4_reference(random_2to4(n, k, dtype=torch.float32).to(dtype).to(DEVICE))


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


TOL = {torch.float16: 5e-3, torch.bfloat16: 1e-2}

CASES = [
    # (M, N, K, config)
    (1, 24, 64, SmallConfig("select", 1, 16, 32)),
    (3, 40, 96, SmallConfig("select", 4, 16, 4)),
    (2, 33, 160, SmallConfig("select", 2, 16, 4, split_k=3)),
    (5, 70, 128, SmallConfig("dot", 16, 64, 2, split_k=2)),
    (7, 40, 96, SmallConfig("dot", 16, 32, 4)),
    (19, 72, 208, SmallConfig("dot", 16, 64, 4, num_stages=2)),
    (1, 40, 96, SmallConfig("gemv", 1, 16, 2)),
    (3, 24, 160, SmallConfig("gemv", 1, 8, 4, split_k=2)),
    (1, 24, 64, SmallConfig("fma", 1, 16, 8)),
    (3, 40, 96, SmallConfig("fma", 1, 16, 2)),
    (2, 33, 208, SmallConfig("fma", 1, 8, 4, split_k=3)),
]


@pytest.mark.parametrize("m,n,k,config", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(m, n, k, config, dtype, with_bias):
    if config.kernel == "dot" and dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("the Triton interpreter's tl.dot does not handle bfloat16")
    values, meta = _packed(n, k, dtype)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype) if with_bias else None
    out = spmm24_small(x, values, meta, bias, config)
    ref = spmm24_small_reference(x, values, meta, bias)
    assert out.shape == (m, n) and out.dtype == dtype
    assert not out.isnan().any()
    assert _rel_err(out, ref) < TOL[dtype]


def test_split_k_is_deterministic():
    values, meta = _packed(48, 256, torch.float16)
    x = torch.randn(2, 256, device=DEVICE).to(torch.float16)
    config = SmallConfig("gemv", 1, 16, 2, split_k=4)
    first = spmm24_small(x, values, meta, None, config)
    assert all(torch.equal(first, spmm24_small(x, values, meta, None, config)) for _ in range(3))


def test_wrong_weight_is_detected():
    """A kernel that ignored the metadata (or swapped the two values) would fail the tolerance above."""
    values, meta = _packed(32, 64, torch.float16)
    x = torch.randn(3, 64, device=DEVICE).to(torch.float16)
    out = spmm24_small(x, values, meta, None, SmallConfig("select", 4, 16, 4))
    swapped = spmm24_small_reference(x, values.view(32, -1, 2).flip(-1).reshape(32, -1), meta)
    assert _rel_err(out, swapped) > 0.5


def test_3d_strided_input_and_values_view():
    m, n, k = 6, 48, 64
    values, meta = _packed(n, k, torch.float16)
    # values as the head of a longer flat buffer, like the cuSPARSELt compressed weight
    buffer = torch.cat([values.flatten(), torch.randn(n * k // 16, device=DEVICE).to(torch.float16)])
    view = buffer[: n * k // 2].view(n, k // 2)
    x = torch.randn(2, 2 * k, m // 2, device=DEVICE).to(torch.float16).transpose(1, 2)[..., ::2]  # non-contiguous
    out = spmm24_small(x, view, meta, None, SmallConfig("select", 4, 16, 4, split_k=2))
    ref = spmm24_small_reference(x.reshape(-1, k), values, meta).reshape(2, m // 2, n)
    assert out.shape == (2, m // 2, n)
    assert _rel_err(out, ref) < TOL[torch.float16]


@pytest.mark.parametrize("m", [1, 3, 4, 5, 33, 300])
def test_default_config_is_valid(m):
    cfg = default_config(m, 4096, 4096)
    assert cfg.kernel == ("select" if m <= 4 else "dot")
    assert cfg.block_m >= min(m, 16)
    assert cfg.split_k >= 1


def test_bad_inputs_raise_clear_errors():
    values, meta = _packed(16, 32, torch.float16)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        spmm24_small(torch.randn(2, 32, device=DEVICE), values, meta)
    with pytest.raises(ValueError, match="features"):
        spmm24_small(torch.randn(2, 48, device=DEVICE).half(), values, meta)
    with pytest.raises(ValueError, match="bias"):
        spmm24_small(torch.randn(2, 32, device=DEVICE).half(), values, meta, torch.zeros(3, device=DEVICE).half())
