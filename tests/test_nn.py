import pytest
import torch
import torch.nn.functional as F
from conftest import random_2to4
from torch import nn

from sparse_llm import SparseLinear, backends, nm_mask

DTYPE_TOL = [(torch.float32, 1e-6, 1e-5), (torch.bfloat16, 1e-2, 1e-2), (torch.float16, 1e-3, 1e-3)]


def masked_linear(n: int, k: int, bias: bool, dtype=torch.float32) -> nn.Linear:
    linear = nn.Linear(k, n, bias=bias).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(random_2to4(n, k, dtype=dtype))
    return linear


@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPE_TOL)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (2, 3), (1, 1, 7), ()])
def test_forward_equals_masked_dense_linear(lead, bias, dtype, atol, rtol):
    linear = masked_linear(24, 48, bias, dtype)
    sparse = SparseLinear.from_linear(linear)
    x = torch.randn(*lead, 48).to(dtype)
    torch.testing.assert_close(sparse(x), F.linear(x, linear.weight, linear.bias), atol=atol, rtol=rtol)
    assert sparse(x).shape == (*lead, 24)


def test_from_linear_with_mask_applies_it_first():
    linear = nn.Linear(32, 8)
    mask = nm_mask(linear.weight.detach().abs())
    sparse = SparseLinear.from_linear(linear, mask=mask)
    assert torch.equal(sparse.dense_weight(), linear.weight.detach() * mask)
    x = torch.randn(3, 32)
    torch.testing.assert_close(sparse(x), F.linear(x, linear.weight * mask, linear.bias))


def test_from_linear_rejects_dense_weight_naming_the_layer():
    with pytest.raises(ValueError, match=r"layer 'blk.0.fc': weight is not 2:4: row 0"):
        SparseLinear.from_linear(nn.Linear(32, 8), name="blk.0.fc")
    with pytest.raises(ValueError, match="mask shape"):
        SparseLinear.from_linear(nn.Linear(32, 8), mask=torch.ones(8, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of 16"):
        SparseLinear.from_linear(nn.Linear(24, 8), mask=torch.zeros(8, 24, dtype=torch.bool))


def test_to_linear_round_trip_and_module_semantics():
    linear = masked_linear(16, 32, bias=True)
    sparse = SparseLinear.from_linear(linear)
    back = sparse.to_linear()
    assert torch.equal(back.weight, linear.weight) and torch.equal(back.bias, linear.bias)
    assert sparse.in_features == 32 and sparse.out_features == 16
    assert set(sparse.state_dict()) == {"values", "meta", "bias"}
    half = sparse.half()
    assert half.values.dtype == torch.float16 and half.meta.dtype == torch.int16 and half.bias.dtype == torch.float16


def test_wrong_input_gets_clear_errors():
    sparse = SparseLinear.from_linear(masked_linear(8, 32, bias=False))
    with pytest.raises(TypeError, match="input dtype torch.float16"):
        sparse(torch.randn(2, 32).half())
    with pytest.raises(ValueError, match="last dim 31"):
        sparse(torch.randn(2, 31))


def test_backend_dispatch_is_inspectable_and_forceable(monkeypatch):
    sparse = SparseLinear.from_linear(masked_linear(8, 32, bias=False))
    x = torch.randn(4, 32)
    assert backends.select(sparse, x).name == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "no-such-backend")
    with pytest.raises(ValueError, match="unknown SparseLinear backend 'no-such-backend'"):
        sparse(x)
