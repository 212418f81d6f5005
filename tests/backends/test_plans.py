"""SparseLinear's plans (``sparse_llm.backends``): on the CPU, with a bindable backend that counts what runs."""

import copy
import io
import weakref

import pytest
import torch
import torch.nn.functional as F
from conftest import random_2to4

from sparse_llm import Sparse24Weight, SparseLinear, backends
from sparse_llm.backends import cusparselt


class Counting:
    """A backend that binds calls (its bound call is the reference product) and counts binds and runs."""

    def __init__(self):
        self.binds, self.bound_runs, self.plain_runs = 0, 0, 0

    def backend(self) -> backends.Backend:
        def run(module, x):
            self.plain_runs += 1
            return backends.REFERENCE.run(module, x)

        def bind(module, x):
            self.binds += 1
            weight, bias = module.dense_weight(), module.bias  # resolved once, as the GPU backends resolve theirs

            def bound(x):
                self.bound_runs += 1
                return F.linear(x, weight, bias)

            return bound

        return backends.Backend("counting", applies=lambda module, x: True, run=run, bind=bind)


@pytest.fixture
def counting(monkeypatch):
    fake = Counting()
    monkeypatch.setattr(backends, "BACKENDS", [fake.backend(), backends.REFERENCE])
    monkeypatch.setattr(backends, "USE_PLANS", True)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    return fake


def layer(n=24, k=48, bias=True, seed=0) -> SparseLinear:
    torch.manual_seed(seed)
    b = torch.randn(n) if bias else None
    return SparseLinear.from_weight(Sparse24Weight.from_dense(random_2to4(n, k)), b)


def expected(module: SparseLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, module.dense_weight(), module.bias)


@pytest.mark.parametrize("bias", [True, False])
def test_second_call_runs_the_plan_with_the_same_result(counting, bias):
    module, x = layer(bias=bias), torch.randn(5, 48)
    first = module(x)
    assert counting.binds == 1 and counting.bound_runs == 1
    assert backends.plan_of(module, x) is not None
    second = module(x)
    assert counting.binds == 1 and counting.bound_runs == 2 and counting.plain_runs == 0
    torch.testing.assert_close(first, expected(module, x), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_one_plan_per_input_shape_leading_dims_included(counting):
    module = layer()
    module(torch.randn(5, 48))
    module(torch.randn(7, 48))
    assert counting.binds == 2
    for _ in range(2):
        x3 = torch.randn(2, 3, 48)  # 3-D input: its own plan, flattened to 6 rows and reshaped back
        torch.testing.assert_close(module(x3), expected(module, x3), rtol=0, atol=0)
    assert counting.binds == 3 and counting.bound_runs == 4


def test_inputs_a_plan_does_not_match_still_get_the_clear_errors(counting):
    module, x = layer(), torch.randn(5, 48)
    module(x)
    with pytest.raises(TypeError, match="input dtype torch.float64"):
        module(x.double())
    with pytest.raises(ValueError, match="input's last dim 40 != in_features 48"):
        module(torch.randn(5, 40))


@pytest.mark.parametrize("replace", ["load_state_dict_assign", "assign_values", "new_bias"])
def test_a_replaced_tensor_binds_a_new_plan(counting, replace):
    module, x = layer(seed=0), torch.randn(3, 48)
    module(x)
    other = layer(seed=1)
    if replace == "load_state_dict_assign":
        module.load_state_dict(other.state_dict(), assign=True)
    elif replace == "assign_values":
        module.values, module.meta = other.values, other.meta
    else:
        module.bias = torch.nn.Parameter(other.bias.clone(), requires_grad=False)
    assert backends.plan_of(module, x) is None
    out = module(x)
    assert counting.binds == 2
    torch.testing.assert_close(out, expected(module, x), rtol=0, atol=0)


def test_a_weight_loaded_in_place_is_what_the_plan_reads(counting):
    """load_state_dict without ``assign`` copies into the same tensors: the plans are dropped (the GPU backends'
    compressed copies would be stale) and the next call gives the new weight's result."""
    module, x = layer(seed=0), torch.randn(3, 48)
    module(x)
    other = layer(seed=1)
    module.load_state_dict(other.state_dict())
    assert backends.plan_of(module, x) is None
    torch.testing.assert_close(module(x), expected(other, x), rtol=0, atol=0)


@pytest.mark.parametrize("change", ["to_float64", "load_state_dict"])
def test_converting_or_loading_drops_the_plans_and_their_tensors(counting, change):
    module, x = layer(), torch.randn(3, 48)
    module(x)
    module(torch.randn(4, 48))
    old_values = weakref.ref(module.values)
    if change == "to_float64":
        module.to(torch.float64)
    else:
        module.load_state_dict(layer(seed=1).state_dict(), assign=True)
    assert module.__dict__[backends.PLANS_ATTR] == {}
    assert old_values() is None, "a plan kept the old values alive"


def test_a_layer_with_plans_pickles_and_deepcopies(counting):
    module, x = layer(), torch.randn(3, 48)
    module(x)
    clone = copy.deepcopy(module)
    assert backends.PLANS_ATTR not in clone.__dict__
    clone.load_state_dict(layer(seed=1).state_dict())
    assert backends.plan_of(module, x) is not None  # the original keeps its plan
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x), expected(module, x), rtol=0, atol=0)
    loaded.load_state_dict(layer(seed=2).state_dict())  # the loaded layer's own hook still works
    torch.testing.assert_close(loaded(x), expected(layer(seed=2), x), rtol=0, atol=0)


def test_a_stale_plan_drops_the_others(counting):
    module = layer()
    module(torch.randn(3, 48))
    module(torch.randn(4, 48))
    module.values = module.values.clone()  # a plain assignment: noticed at the next call
    module(torch.randn(3, 48))
    assert list(module.__dict__[backends.PLANS_ATTR]) == [
        (torch.Size([3, 48]), torch.float32, torch.device("cpu"), None)
    ]


def test_plans_per_module_are_bounded(counting, monkeypatch):
    monkeypatch.setattr(backends, "MAX_PLANS", 4)
    module = layer()
    for m in range(1, 11):
        module(torch.randn(m, 48))
    assert 1 <= len(module.__dict__[backends.PLANS_ATTR]) <= 4


def test_a_dropped_cusparselt_state_binds_a_new_plan(counting):
    module, x = layer(), torch.randn(3, 48)
    setattr(module, cusparselt.STATE_ATTR, object())  # as cuSPARSELt's prepare leaves it
    module(x)
    setattr(module, cusparselt.STATE_ATTR, None)  # what its load_state_dict hook does
    assert backends.plan_of(module, x) is None
    module(x)
    assert counting.binds == 2


def test_forcing_another_backend_is_not_served_by_the_plan(counting, monkeypatch):
    module, x = layer(), torch.randn(3, 48)
    module(x)
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    module(x)
    assert counting.bound_runs == 1 and counting.binds == 1  # the reference ran, not the counting plan
    module.backend = "no-such-backend"
    with pytest.raises(ValueError, match="unknown SparseLinear backend 'no-such-backend'"):
        module(x)


def test_empty_input_binds_nothing(counting):
    module = layer()
    assert module(torch.randn(0, 48)).shape == (0, 24)
    assert counting.binds == 0 and counting.plain_runs == 1


def test_plans_can_be_turned_off(counting, monkeypatch):
    module, x = layer(), torch.randn(3, 48)
    module(x)
    monkeypatch.setattr(backends, "USE_PLANS", False)
    module(x)
    module(x)
    assert counting.binds == 1 and counting.bound_runs == 1 and counting.plain_runs == 2


def test_the_state_attribute_is_cusparselts():
    assert backends._CUSPARSELT_STATE == cusparselt.STATE_ATTR


def test_compiled_calls_never_run_a_plan(counting):
    module, x = layer(), torch.randn(3, 48)
    module(x)
    compiled = torch.compile(module, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), expected(module, x), rtol=0, atol=0)
    assert counting.bound_runs == 1


def test_converting_drops_the_cusparselt_state_too(counting):
    module, x = layer(), torch.randn(3, 48)
    setattr(module, cusparselt.STATE_ATTR, object())
    module(x)
    module.to(torch.float16)
    assert getattr(module, cusparselt.STATE_ATTR) is None
    torch.testing.assert_close(module(x.half()), expected(module, x.half()), rtol=0, atol=0)
