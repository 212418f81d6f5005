from dataclasses import replace

import pytest
import torch

from sparse_llm import tune
from sparse_llm.backends import sparse_mma


def _fake_eager(monkeypatch, times):
    calls = []

    def fake(fn):
        calls.append(fn)
        return times[len(calls) - 1]

    monkeypatch.setattr(tune, "time_us", fake)
    return calls


def test_eager_time_retries_a_slow_window(monkeypatch):
    calls = _fake_eager(monkeypatch, [200.0, 210.0, 41.0, 300.0])
    assert tune.eager_us(lambda: None, graph_us=40.8) == 41.0
    assert len(calls) == 3  # the third run is close to the graph time: no fourth


def test_eager_time_keeps_a_real_launch_cost(monkeypatch):
    calls = _fake_eager(monkeypatch, [57.5, 58.0, 57.9, 57.6])
    assert tune.eager_us(lambda: None, graph_us=16.7) == 57.5
    assert len(calls) == 4


def test_eager_time_two_runs_when_close(monkeypatch):
    calls = _fake_eager(monkeypatch, [22.0, 20.0])
    assert tune.eager_us(lambda: None, graph_us=18.0) == 20.0
    assert len(calls) == 2


@pytest.mark.parametrize("capability", [(9, 0), (8, 0)])
@pytest.mark.parametrize("m", [1, 8, 33, 64, 128, 256])
def test_mma_candidates(monkeypatch, m, capability):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    monkeypatch.setattr(sparse_mma, "_capability", lambda index: capability)
    dev = torch.device("cuda", 0)
    cands = tune.mma_candidates(m, 4096, 4096, dev)
    base = sparse_mma.default_config(m, 4096, 4096, dev)
    assert cands[0] == base and len(set(cands)) == len(cands)
    for c in cands:
        assert (c.rows, c.tokens, c.stages, c.warps) in sparse_mma.TILES
        assert 1 <= c.split <= 4096 // 256
        assert c.tokens in (base.tokens // 2, base.tokens, 2 * base.tokens)
        if base.stages >= 3:
            assert c.stages >= 3
    if base.split > 1:  # fewer pieces than the automatic split are tried
        assert any(c.split < base.split for c in cands)
    # the cluster reduction is tried for every split of 2-8 pieces on sm_90, never elsewhere
    plain = {c for c in cands if not c.cluster}
    with_cluster = {c for c in cands if c.cluster}
    assert all(2 <= c.split <= sparse_mma.MAX_CLUSTER for c in with_cluster)
    if capability >= (9, 0):
        assert {replace(c, cluster=True) for c in plain if 2 <= c.split <= sparse_mma.MAX_CLUSTER} <= with_cluster
    else:
        assert not with_cluster


def test_partial_tuning_merges_into_the_entry():
    old = {"crossover": 4, "backends": {"1": "sparse_mma", "512": "cusparselt"},
           "mma_configs": {"1": {"rows": 16}}, "triton_configs": {"1": {"kernel": "fma"}}}  # fmt: skip
    new = {"crossover": 0, "backends": {"512": "sparse_mma", "1024": "cusparselt"},
           "mma_configs": {"512": {"rows": 16, "wgmma": True}},
           "triton_configs": {"512": {"kernel": "dot"}}}  # fmt: skip
    merged = tune._merged(old, new, (512, 1024))
    assert merged["backends"] == {"1": "sparse_mma", "512": "sparse_mma", "1024": "cusparselt"}
    assert merged["mma_configs"]["1"] == {"rows": 16} and merged["mma_configs"]["512"]["wgmma"]
    assert merged["crossover"] == 4  # measured from 512 on: the Triton/cuSPARSELt crossover is the old one
    assert tune._merged(old, new, (1, 2))["crossover"] == 0
    assert tune._merged(None, new, (512,)) == new


def test_mma_candidates_on_a_gpu_with_the_warpgroup_kernel(monkeypatch):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    monkeypatch.setattr(sparse_mma, "_capability", lambda index: (9, 0))
    monkeypatch.setattr(sparse_mma, "wgmma_usable", lambda device: True)
    dev = torch.device("cuda", 0)
    cands = tune.mma_candidates(64, 4096, 4096, dev)
    assert cands[0] == sparse_mma.mma_sp_default_config(64, 4096, 4096, dev) and not cands[0].wgmma
    assert all(c.wgmma for c in cands[1:]) and cands[1:] == tune.wgmma_candidates(64, 4096, 4096, dev)
