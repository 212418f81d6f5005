"""pytest-benchmark micro cases of one Llama-2-7B q_proj (4096x4096, bf16): dense vs SparseLinear per M.

    python -m pytest bench/test_micro.py --benchmark-only     (GPU only; skipped without CUDA)

Each round runs the call and synchronizes, so the numbers include launch overhead (eager use); the
CUDA-graph and L2-cleared medians are in ``bench/layers.py``.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def layer_and_dense():
    from sparse_llm import Sparse24Weight, SparseLinear

    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    keep = torch.rand(4096, 1024, 4, device="cuda").argsort(-1) < 2
    dense = w * keep.reshape(4096, 4096)
    return SparseLinear.from_weight(Sparse24Weight.from_dense(dense)), dense


@pytest.mark.parametrize("m", [1, 16, 128, 4096])
@pytest.mark.parametrize("provider", ["dense", "sparse"])
def test_q_proj(benchmark, layer_and_dense, provider, m):
    layer, dense = layer_and_dense
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    fn = (lambda: F.linear(x, dense)) if provider == "dense" else (lambda: layer(x))
    fn()  # compile / plan / search outside the timing

    def call():
        fn()
        torch.cuda.synchronize()

    benchmark(call)
