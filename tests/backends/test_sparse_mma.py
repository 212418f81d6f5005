"""The sparse tensor-core backend's host-side logic (the kernel itself is checked in test_gpu_backends.py)."""

import json

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


def test_wgmma_header_is_what_the_generator_writes():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "csrc" / "gen_wgmma_sp.py"
    spec = importlib.util.spec_from_file_location("gen_wgmma_sp", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.HEADER.read_text() == gen.render(), "run python csrc/gen_wgmma_sp.py"
    assert {tile[0] for tile in sparse_mma.WGMMA_TILES} <= set(gen.TOKENS)


def test_wgmma_tiles_are_the_instantiated_ones():
    from sparse_llm.backends import _build

    listed = _build.wgmma_source_tiles("SPARSE_LLM_WGMMA_TILES(X)")
    assert listed == set(sparse_mma.WGMMA_TILES)
    # the tiles built only to be measured (SPARSE_LLM_WGMMA_EXTRA_TILES) are none of the shipped ones
    extra = _build.wgmma_source_tiles("SPARSE_LLM_WGMMA_EXTRA_TILES_LIST(X)")
    assert extra and not extra & listed


def test_every_knob_a_measured_variant_sets_is_read_by_the_warpgroup_source():
    # a misspelt -D flag would build the shipped kernel again and time it as the variant
    import importlib.util
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("wgmma_variants", root / "bench" / "wgmma_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    source = "".join(p.read_text() for p in sorted((root / "csrc").glob("spmm24_wgmma*")))
    read = set(re.findall(r"#ifndef (SPARSE_LLM_WGMMA_\w+)", source))
    knobs = {knob for defines in variants.VARIANTS.values() for knob in defines}
    assert "SPARSE_LLM_WGMMA_K_ROTATE" in knobs and knobs <= read, knobs - read
    assert variants.VARIANTS["base"] == {}


def test_wgmma_is_off_without_an_h100(monkeypatch):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    cpu = torch.device("cpu")
    assert not sparse_mma.wgmma_usable(cpu)
    assert tune.wgmma_candidates(16, 4096, 4096, cpu) == []
    assert not sparse_mma.wgmma_usable(torch.device("cuda", 0))  # no CUDA here
    assert not sparse_mma.default_config(16, 4096, 4096, torch.device("cuda", 0)).wgmma


@pytest.mark.parametrize("m", [1, 7, 16, 64, 100, 128, 256, 1000])
@pytest.mark.parametrize("n,k", [(1024, 4096), (4096, 4096), (28672, 8192), (4096, 11008)])
def test_wgmma_default_and_candidates(monkeypatch, m, n, k):
    monkeypatch.setattr(sparse_mma, "_num_sms", lambda index: 132)
    monkeypatch.setattr(sparse_mma, "wgmma_usable", lambda device: True)
    dev = torch.device("cuda", 0)
    cfg = sparse_mma.default_config(m, n, k, dev)
    assert cfg.wgmma and cfg.wgmma_tile in sparse_mma.WGMMA_TILES and sparse_mma.wgmma_fits(n, k, cfg)
    assert cfg.tokens >= min(m, 128) and cfg.stages == 0 and not cfg.cluster
    assert 1 <= cfg.split and k // (sparse_mma.WGMMA_CHUNK * cfg.split) >= 4
    # H100 sweep (wgmma_check_v2_h100.json): 4 pieces for 1024x4096 at M <= 16, none for 4096+ rows
    if n >= 4096:
        assert cfg.split == 1
    if (n, k) == (1024, 4096) and m <= 8:
        assert cfg.split == 4
    candidates = tune.wgmma_candidates(m, n, k, dev)
    assert cfg in candidates and len(candidates) == len(set(candidates)) <= 40
    for c in candidates:
        assert c.wgmma and c.wgmma_tile in sparse_mma.WGMMA_TILES and sparse_mma.wgmma_fits(n, k, c)
        assert sparse_mma.MmaConfig(**c.as_dict()) == c


def test_wgmma_config_checks_before_any_launch():
    values = torch.zeros(192, 256, dtype=torch.bfloat16)
    meta = torch.zeros(192, 32, dtype=torch.int16)
    x = torch.zeros(4, 512, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no warpgroup kernel"):
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.wgmma_config(24, 1), check=False)
    with pytest.raises(ValueError, match="out_features by 128"):
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.wgmma_config(64, 2), check=False)
    with pytest.raises(ValueError, match="out_features by 256"):  # two blocks of 128 rows share x
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.wgmma_config(128, 2, 1, (1, 2)), check=False)
    with pytest.raises(ValueError, match="no warpgroup kernel"):  # no cluster of the 8-token tile
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.wgmma_config(8, 1, 1, (2, 1)), check=False)
    with pytest.raises(ValueError, match="no sparse tensor-core kernel"):  # clusters sharing W or x: wgmma only
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.MmaConfig(32, 8, wgmma_cluster=(2, 1)), check=False)
    with pytest.raises(ValueError, match="each 1 or 2"):
        sparse_mma.wgmma_config(128, 2, 1, (1, 4))
    with pytest.raises(ValueError, match="split must be 1 to 4"):
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.wgmma_config(64, 1, 5), check=False)
    with pytest.raises(ValueError, match="split must be 1 to 2"):
        sparse_mma.spmm24_mma(x, values, meta, None, sparse_mma.MmaConfig(32, 8, 1, 3, 4), check=False)


def test_wgmma_cluster_round_trips_through_the_tuned_table():
    cfg = sparse_mma.wgmma_config(128, 4, 1, (2, 1))
    back = sparse_mma.MmaConfig(**json.loads(json.dumps(cfg.as_dict())))
    assert back == cfg and hash(back) == hash(cfg) and back.wgmma_tile == (128, 4, 2, 1)
    assert back.wgmma_tile in sparse_mma.WGMMA_TILES


@pytest.mark.parametrize(
    "m, w_mb, policy",
    [(1, 10, (True, False)), (256, 100, (True, False)), (257, 10, (False, True)), (1, 101, (False, True)),
     (64, 264, (False, True))],
)  # fmt: skip
def test_wgmma_streams_w_evict_first_up_to_m_256_and_two_l2_caches_of_weight(m, w_mb, policy):
    """Evict-first without promotion for W's copies up to M = 256 and a W of at most 2 L2 caches (of 50 MB here),
    else the defaults."""
    assert sparse_mma.wgmma_w_policy(m, w_mb << 20, 50 << 20) == policy


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), (" ", None), ("0", 0), ("1", 1), ("3", 3)])
def test_launch_mode_from_env(value, expected):
    assert sparse_mma.launch_mode_from_env(value) == expected


@pytest.mark.parametrize("value", ["4", "-1", "yes", "1.5"])
def test_launch_mode_from_env_names_a_bad_value(value):
    with pytest.raises(ValueError, match="SPARSE_LLM_PDL must be one of"):
        sparse_mma.launch_mode_from_env(value)


@pytest.mark.parametrize("mode", [4, -1, "1"])
def test_set_launch_mode_refuses_what_is_not_a_mode(mode):
    with pytest.raises(ValueError, match="launch mode must be one of"):
        sparse_mma.set_launch_mode(mode)


class _FakeWgmmaExtension:
    def __init__(self):
        self.modes = []

    def set_launch_mode(self, mode):
        self.modes.append(mode)
        return 0


@pytest.mark.parametrize(("env", "applied"), [(None, sparse_mma.DEFAULT_LAUNCH_MODE), ("", 3), ("0", 0), ("1", 1)])
def test_loading_the_warpgroup_extension_applies_the_launch_mode_once(monkeypatch, env, applied):
    """Mode 3 (selective programmatic launch) unless SPARSE_LLM_PDL says otherwise, set once per process."""
    fake = _FakeWgmmaExtension()
    monkeypatch.setattr(sparse_mma, "load_wgmma_extension", lambda: fake)
    if env is None:
        monkeypatch.delenv("SPARSE_LLM_PDL", raising=False)
    else:
        monkeypatch.setenv("SPARSE_LLM_PDL", env)
    sparse_mma._wgmma_extension.cache_clear()
    try:
        assert sparse_mma._wgmma_extension() is fake
        assert sparse_mma._wgmma_extension() is fake
        assert fake.modes == [applied]
        assert sparse_mma.set_launch_mode(0) == 0 and fake.modes == [applied, 0]
    finally:
        sparse_mma._wgmma_extension.cache_clear()


def test_a_bad_launch_mode_in_the_environment_fails_the_load_with_its_name(monkeypatch):
    monkeypatch.setattr(sparse_mma, "load_wgmma_extension", _FakeWgmmaExtension)
    monkeypatch.setenv("SPARSE_LLM_PDL", "2x")
    sparse_mma._wgmma_extension.cache_clear()
    try:
        with pytest.raises(ValueError, match="SPARSE_LLM_PDL must be one of .* got '2x'"):
            sparse_mma._wgmma_extension()
    finally:
        sparse_mma._wgmma_extension.cache_clear()
