import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sparse_llm import tune
from sparse_llm.backends import sparse_mma
from sparse_llm.backends.triton_small import KERNELS, SmallConfig


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


def test_token_counts_to_tune_are_powers_of_two():
    assert tune.check_ms([1024, 4, 4, 1]) == (1, 4, 1024)
    assert tune.check_ms(tune.TUNE_MS) == tune.TUNE_MS
    with pytest.raises(ValueError, match=r"powers of two.*\[3000\].*3000 -> 4096"):
        tune.check_ms([1024, 3000])
    with pytest.raises(ValueError, match=r"got \[0\]"):
        tune.check_ms([0, 16])
    with pytest.raises(ValueError, match="at least one"):
        tune.check_ms([])
    with pytest.raises(ValueError, match=r"\[100\]"):  # before the GPU check: the mistake is named on any machine
        tune.tune([(1024, 4096)], ms=(64, 100))


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


H100 = "NVIDIA H100 80GB HBM3"
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def test_shipped_tables_are_the_committed_measurements(monkeypatch):
    """sparse_llm/tables holds copies of bench/results' tuning tables (update with cp after a retune)."""
    monkeypatch.delenv("SPARSE_LLM_SHIPPED_TABLES", raising=False)
    committed = {}
    for path in (RESULTS / "crossover_h100.json", RESULTS / "h200" / "crossover_h200.json"):
        committed.update(tune.keyed(json.loads(path.read_text())))
    assert tune.shipped_table() == committed, "copy bench/results' crossover_h100.json and h200/crossover_h200.json"
    gpus = {e["gpu"] for e in committed.values()}
    assert H100 in gpus and len(gpus) == 2
    for e in committed.values():  # every configuration a shipped entry names is one this package can launch
        for cfg in e["mma_configs"].values():
            mma = sparse_mma.MmaConfig(**cfg)
            assert not mma.wgmma or mma.wgmma_tile in sparse_mma.WGMMA_TILES
        for cfg in e["triton_configs"].values():
            assert SmallConfig(**cfg).kernel in KERNELS
        assert set(e["backends"].values()) <= {"sparse_mma", "triton_small", "cusparselt"}


def test_an_untuned_shape_takes_the_shipped_entry_of_its_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_LLM_CACHE", str(tmp_path))  # nothing tuned by the user
    monkeypatch.delenv("SPARSE_LLM_SHIPPED_TABLES", raising=False)
    monkeypatch.setattr(tune, "_cached_gpu_name", lambda index: H100)
    cuda, bf16 = torch.device("cuda", 0), torch.bfloat16
    shipped = tune.shipped_table()[tune.entry_key(H100, 4096, 14336, bf16)]
    assert tune.lookup(4096, 14336, bf16, cuda) is shipped
    for m in (1, 100, 4096):
        want = shipped["backends"].get(str(tune.m_bucket(m)), "cusparselt")
        assert tune.choose_backend(4096, 14336, m, bf16, cuda, cusparselt_ok=True, mma_ok=True) == want
    assert tune.lookup(4096, 14336, torch.float16, cuda) is None  # measured in bf16 only
    assert tune.lookup(4096, 14336, bf16, torch.device("cpu")) is None
    monkeypatch.setattr(tune, "_cached_gpu_name", lambda index: "NVIDIA H100 PCIe")
    assert tune.lookup(4096, 14336, bf16, cuda) is None  # another GPU: untuned defaults
    monkeypatch.setattr(tune, "_cached_gpu_name", lambda index: H100)
    monkeypatch.setenv("SPARSE_LLM_SHIPPED_TABLES", "0")
    assert tune.lookup(4096, 14336, bf16, cuda) is None


def test_an_unreadable_shipped_table_warns_and_leaves_the_defaults(monkeypatch):
    monkeypatch.delenv("SPARSE_LLM_SHIPPED_TABLES", raising=False)
    monkeypatch.setattr(tune, "SHIPPED_TABLES", ("crossover_h100.json", "missing.json"))
    tune._shipped.cache_clear()
    try:
        with pytest.warns(UserWarning, match="missing.json is unreadable"):
            table = tune.shipped_table()
        assert table and {e["gpu"] for e in table.values()} == {H100}  # the readable one still counts
    finally:
        tune._shipped.cache_clear()


def test_the_users_tuning_wins_and_merges_over_the_shipped_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_LLM_CACHE", str(tmp_path))
    monkeypatch.delenv("SPARSE_LLM_SHIPPED_TABLES", raising=False)
    monkeypatch.setattr(tune, "_cached_gpu_name", lambda index: H100)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bf16, cuda = torch.bfloat16, torch.device("cuda", 0)
    shipped = tune.shipped_table()[tune.entry_key(H100, 4096, 4096, bf16)]
    new = {"gpu": H100, "n": 4096, "k": 4096, "dtype": "bfloat16", "crossover": 0, "backends": {"512": "triton_small"},
           "triton_configs": {"512": {"kernel": "dot"}}, "mma_configs": {}, "measurements": []}  # fmt: skip
    monkeypatch.setattr(tune, "tune_shape", lambda n, k, dtype, ms, weigh_stream: new)
    tune.tune([(4096, 4096)], bf16, (512,))
    entry = tune.lookup(4096, 4096, bf16, cuda)
    assert entry["backends"] == {**shipped["backends"], "512": "triton_small"}  # the other buckets as shipped
    assert entry["crossover"] == shipped["crossover"] and entry["mma_configs"] == shipped["mma_configs"]
    assert tune.choose_backend(4096, 4096, 300, bf16, cuda, cusparselt_ok=True, mma_ok=True) == "triton_small"
    assert tune.effective_table()[tune.entry_key(H100, 4096, 4096, bf16)] == entry
    assert tune.shipped_table()[tune.entry_key(H100, 4096, 4096, bf16)] is shipped  # the package's copy unchanged


def test_mma_candidates_on_a_gpu_with_the_warpgroup_kernel(monkeypatch):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    monkeypatch.setattr(sparse_mma, "_capability", lambda index: (9, 0))
    monkeypatch.setattr(sparse_mma, "wgmma_usable", lambda device: True)
    dev = torch.device("cuda", 0)
    cands = tune.mma_candidates(64, 4096, 4096, dev)
    assert cands[0] == sparse_mma.mma_sp_default_config(64, 4096, 4096, dev) and not cands[0].wgmma
    assert all(c.wgmma for c in cands[1:]) and cands[1:] == tune.wgmma_candidates(64, 4096, 4096, dev)


def test_stream_shortlist_keeps_the_near_fastest_replays():
    graph = [20.0, 16.4, 17.5, 30.0, 18.0, 16.5, 18.8]
    assert tune.stream_shortlist(graph) == [1, 5, 2, 4]  # within 1.15 x 16.4 = 18.86, the fastest first, at most 4
    assert tune.stream_shortlist([5.0]) == [0]
    with pytest.raises(ValueError, match="no candidate"):
        tune.stream_shortlist([])


def test_weigh_columns_takes_the_least_worse_column():
    # 1024x4096 at M = 512 on the H100 (43c3190): (128 tokens, split 2) 16.4 us replayed, 13.7 in the stream;
    # (64 tokens, split 1) 17.5 and 11.3: 6.7% behind in the replay against 21% in the stream
    assert tune.weigh_columns([16.4, 17.5], [13.7, 11.3]) == 1
    assert tune.weigh_columns([16.4, 20.0], [13.7, 11.3]) == 0  # 22% behind replayed: worse than the 21% in the stream
    assert tune.weigh_columns([10.0, 10.0], [12.0, 12.0]) == 0  # ties go to the faster replay, then the first
    with pytest.raises(ValueError, match="one stream time per replay time"):
        tune.weigh_columns([1.0, 2.0], [1.0])


class _FakeKernel:
    """Stand-ins for the sparse tensor-core kernel and the two timers: a configuration's times come from tables,
    and every call records which weight it read."""

    def __init__(self, monkeypatch, graph: dict, stream: dict):
        self.graph, self.stream, self.calls = graph, stream, []
        monkeypatch.setattr(sparse_mma, "spmm24_mma", self.run)
        monkeypatch.setattr(tune, "_bench", self.bench)
        monkeypatch.setattr(tune, "_bench_stream", self.bench_stream)

    def run(self, x, values, meta, bias, cfg):
        self.calls.append((cfg, values))

    def bench(self, fn):
        fn()
        return self.graph[self.calls[-1][0]]

    def bench_stream(self, fns):
        start = len(self.calls)
        for fn in fns:
            fn()
        cfgs = {c for c, _ in self.calls[start:]}
        assert len(cfgs) == 1 and len({id(v) for _, v in self.calls[start:]}) == len(fns)  # one tile, every copy
        return self.stream[cfgs.pop()]


def test_best_mma_weighs_the_stream_only_when_asked(monkeypatch):
    cands = [_Cfg(name) for name in "abcd"]
    graph = {cfg: t for cfg, t in zip(cands, [16.4, 17.5, 25.0, 18.0], strict=True)}
    stream = {cfg: t for cfg, t in zip(cands, [13.7, 11.3, 9.0, 12.5], strict=True)}
    fake = _FakeKernel(monkeypatch, graph, stream)
    weights = [(torch.zeros(1), torch.zeros(1)) for _ in range(3)]
    x = torch.zeros(512, 8)
    rows = []
    assert tune._best_mma(x, weights, cands, rows, weigh_stream=False) == (cands[0], 16.4)
    assert [r["us"] for r in rows] == [16.4, 17.5, 25.0, 18.0] and not any("stream_us" in r for r in rows)
    assert all(v is weights[0][0] for _, v in fake.calls)  # the replay reads one weight
    rows = []
    # c is the fastest in the stream but 52% behind replayed: not on the shortlist; b gives up least (6.7% replayed)
    assert tune._best_mma(x, weights, cands, rows, weigh_stream=True) == (cands[1], 17.5)
    assert [r.get("stream_us") for r in rows] == [13.7, 11.3, None, 12.5]
    assert all(r["m"] == 512 for r in rows)


class _Cfg:
    def __init__(self, name: str):
        self.name = name

    def as_dict(self) -> dict:
        return {"name": self.name}


@pytest.mark.gpu
def test_tune_weighing_the_stream_writes_an_entry_the_dispatch_follows(tmp_path, monkeypatch):
    from sparse_llm import Sparse24Weight, SparseLinear, backends

    monkeypatch.setenv("SPARSE_LLM_CACHE", str(tmp_path))
    n, k, ms = 1024, 4096, (8, 512)
    (entry,) = tune.tune([(n, k)], torch.bfloat16, ms, weigh_stream=True)
    assert set(entry["backends"]) == {"8", "512"} and tune.cache_path() == tmp_path / tune.CACHE_FILE
    read = tune.lookup(n, k, torch.bfloat16, torch.device("cuda", torch.cuda.current_device()))["backends"]
    assert {m: read[m] for m in entry["backends"]} == entry["backends"]  # other buckets: the shipped entry's, if any
    if backends.status()["sparse_mma"]:
        for m in ms:
            mma = [r for r in entry["measurements"] if r["m"] == m and "mma_config" in r]
            streamed = [r for r in mma if "stream_us" in r]
            assert 1 <= len(streamed) <= tune.STREAM_SHORTLIST
            assert entry["mma_configs"][str(m)] in [r["mma_config"] for r in streamed]
            fastest = min(r["us"] for r in mma)
            assert all(r["us"] <= tune.STREAM_SLACK * fastest for r in streamed)
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    dense = dense * (torch.rand(n, k // 4, 4, device="cuda").argsort(-1) < 2).reshape(n, k)
    layer = SparseLinear.from_weight(Sparse24Weight.from_dense(dense))
    for m in (5, 500):  # follows the tuned buckets 8 and 512
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        assert backends.select(layer, x).name == entry["backends"][str(tune.m_bucket(m))]
        ref = torch.nn.functional.linear(x.float(), dense.float())
        assert ((layer(x).float() - ref).norm() / ref.norm()).item() < 1e-2
