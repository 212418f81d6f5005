"""The sparse tensor-core backend's host-side logic (the kernel itself is checked in test_gpu_backends.py)."""

import pytest
import torch

from sparse_llm import Sparse24Weight, SparseLinear, backends, tune
from sparse_llm.backends import sparse_mma


def test_why_not_names_the_problem():
    values = torch.zeros(16, 128, dtype=torch.bfloat16)
    assert "CUDA" in sparse_mma.why_not(torch.zeros(2, 256, dtype=torch.bfloat16), values)
    assert sparse_mma.shape_supported(4096, 11008) and not sparse_mma.shape_supported(64, 544)


@pytest.mark.parametrize(
    "m,expected", [(1, "sparse_mma"), (64, "sparse_mma"), (65, "cusparselt"), (4096, "cusparselt")]
)
def test_default_choice_by_m(m, expected):
    cpu = torch.device("cpu")  # no tuned entry on a CPU device: the defaults apply
    assert tune.choose_backend(4096, 4096, m, torch.bfloat16, cpu, cusparselt_ok=True, mma_ok=True) == expected


def test_default_choice_without_the_kernel():
    cpu = torch.device("cpu")
    assert tune.choose_backend(4096, 4096, 1, torch.bfloat16, cpu, cusparselt_ok=True, mma_ok=False) == "triton_small"
    assert tune.choose_backend(4096, 4096, 64, torch.bfloat16, cpu, cusparselt_ok=False) == "triton_small"


def test_forcing_it_on_a_cpu_input_says_why():
    w = torch.zeros(16, 256)
    w[:, ::2] = 1.0
    layer = SparseLinear.from_weight(Sparse24Weight.from_dense(w))
    with pytest.raises(RuntimeError, match="CUDA input"):
        backends.linear(layer, torch.randn(2, 256), backend="sparse_mma")


def test_default_config_leaves_the_pipelined_kernel_when_offsets_do_not_fit(monkeypatch):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    dev = torch.device("cuda", 0)
    assert sparse_mma.default_config(64, 4096, 4096, dev).stages >= 3
    big = sparse_mma.default_config(2**19, 4096, 4096, dev)  # x of 4 GiB: past the 32-bit copy offsets
    assert big.stages < 3 and (big.rows, big.tokens, big.stages, big.warps) in sparse_mma.TILES


@pytest.mark.parametrize("m", [1, 8, 16, 32, 64])
@pytest.mark.parametrize("n", [1024, 4096])
def test_default_config_clusters_the_split_of_small_layers(monkeypatch, m, n):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    cfg = sparse_mma.default_config(m, n, 4096, torch.device("cuda", 0))
    # the H100 A/B (bench/results/mma_variant_cluster_h100.json): faster below 4096 rows up to 16 tokens only
    assert cfg.cluster == (n < 4096 and m <= 16 and 2 <= cfg.split <= sparse_mma.MAX_CLUSTER)
    assert not (cfg.cluster and cfg.split > sparse_mma.MAX_CLUSTER)
    assert sparse_mma.MmaConfig(**cfg.as_dict()) == cfg  # round trip through a tuned table's JSON
