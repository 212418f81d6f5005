"""The layer benchmark's pieces that need no GPU: how long a stream is, and the per-regime summary."""

import pytest

from sparse_llm import benchmark


@pytest.mark.parametrize(
    ("weight_bytes", "l2_bytes", "expected"),
    [
        (4_718_592, 50 << 20, 45),  # 1024x4096 2:4 on an H100: 45 copies of 4.7 MB span 4 L2s
        (264_241_152, 50 << 20, 2),  # 28672x8192: one copy is 5 L2s, but a stream has 2 calls at least
        (4 * (50 << 20), 50 << 20, 2),
        (4 * (50 << 20) - 1, 50 << 20, 2),
        (50 << 20, 50 << 20, 4),
        ((50 << 20) - 1, 50 << 20, 5),
    ],
)
def test_stream_length_spans_four_l2_caches(weight_bytes, l2_bytes, expected):
    n = benchmark.stream_length(weight_bytes, l2_bytes)
    assert n == expected
    assert n * weight_bytes >= benchmark.STREAM_L2_MULTIPLE * l2_bytes


@pytest.mark.parametrize(("weight_bytes", "l2_bytes"), [(0, 1 << 20), (1 << 20, 0), (-5, 1 << 20)])
def test_stream_length_refuses_empty_sizes(weight_bytes, l2_bytes):
    with pytest.raises(ValueError, match="must be positive"):
        benchmark.stream_length(weight_bytes, l2_bytes)


def test_summarize_takes_the_median_per_regime_and_the_worst_m():
    rows = [
        {"provider": "ours_auto", "m": 1, "stream_speedup": 1.7},
        {"provider": "ours_auto", "m": 16, "stream_speedup": 1.5},
        {"provider": "ours_auto", "m": 8, "stream_speedup": 1.6},
        {"provider": "ours_auto", "m": 64, "stream_speedup": 1.4},
        {"provider": "ours_auto", "m": 512, "stream_speedup": 0.9},  # in no regime, but counts for the worst M
        {"provider": "ours_auto", "m": 2048, "stream_speedup": None},  # not measured: ignored
        {"provider": "dense", "m": 1, "stream_speedup": 1.0},
    ]
    out = benchmark.summarize(rows, "ours_auto", "stream_speedup")
    assert out == {"M<=16": 1.6, "M 32-256": 1.4, "M>=1024": None, "min_any_m": 0.9}


def test_stream_timing_refuses_a_single_call():
    with pytest.raises(ValueError, match="at least 2 calls"):
        benchmark.time_stream_us([lambda: None])


class _FakeGraph:
    def replay(self):
        return None


@pytest.mark.parametrize(
    ("replays", "eager", "expected", "timed"),
    [
        ([90.5, 38.2, 38.4, 38.0], 38.0, 38.2, 2),  # far above the eager time: timed again until it is not
        ([90.5, 91.0, 89.0, 92.0], 38.0, 89.0, 4),  # stays slow: the best of the 4 tries, never more
        ([40.0, 10.0], 38.0, 40.0, 1),  # close to the eager time: one timing
        ([90.5, 10.0], None, 90.5, 1),  # no eager time to compare with: one timing
    ],
)
def test_graph_replay_far_above_the_eager_time_is_timed_again(monkeypatch, replays, eager, expected, timed):
    times = iter(replays)
    calls = []
    monkeypatch.setattr(benchmark, "capture_graph", lambda fn: (_FakeGraph(), None))
    monkeypatch.setattr(benchmark, "time_us", lambda fn: calls.append(fn) or next(times))
    assert benchmark.time_graph_us(lambda: None, eager_us=eager) == expected
    assert len(calls) == timed


def test_paired_rounds_alternate_the_order_and_take_medians(monkeypatch):
    """At M >= PAIRED_MIN_M dense and ours are timed in alternating rounds (eager and replayed), each column the median
    of its rounds; a provider whose capture failed keeps no replayed rounds."""
    graphs = {}

    def capture(fn):
        graphs[fn] = _FakeGraph()
        return graphs[fn], None

    order = []
    times = {"dense": iter([110.0, 105.0]), "ours": iter([70.0, 90.0]), "dense_g": iter([100.0, 95.0]),
             "ours_g": iter([80.0, 60.0])}  # fmt: skip

    def dense():
        return None

    def ours():
        return None

    names = {dense: "dense", ours: "ours"}

    def time_us(fn):
        name = names.get(fn) or next(names[f] + "_g" for f, g in graphs.items() if fn == g.replay)
        order.append(name)
        return next(times[name])

    monkeypatch.setattr(benchmark, "capture_graph", capture)
    monkeypatch.setattr(benchmark, "time_us", time_us)
    results = {"dense": {"us": 100.0, "graph_us": 98.0}, "ours_auto": {"us": 60.0, "graph_us": 65.0}}
    benchmark._paired_rounds({"dense": dense, "ours_auto": ours}, results, 3)
    assert order == ["ours", "ours_g", "dense", "dense_g", "dense", "dense_g", "ours", "ours_g"]
    assert results["dense"]["us_rounds"] == [100.0, 110.0, 105.0] and results["dense"]["us"] == 105.0
    assert results["dense"]["graph_us"] == 98.0 and results["ours_auto"]["graph_us"] == 65.0
    assert results["ours_auto"]["us"] == 70.0 and results["ours_auto"]["graph_us_rounds"] == [65.0, 80.0, 60.0]
    no_graph = {"dense": {"us": 1.0, "graph_us": None}, "ours_auto": {"us": 2.0, "graph_us": 3.0}}
    times.update(dense=iter([5.0]), ours=iter([4.0]), ours_g=iter([3.5]))
    benchmark._paired_rounds({"dense": dense, "ours_auto": ours}, no_graph, 2)
    assert no_graph["dense"]["graph_us"] is None and no_graph["dense"]["graph_us_rounds"] == []
    assert no_graph["dense"]["us"] == 3.0 and no_graph["ours_auto"]["graph_us"] == 3.25


def test_select_shapes_keeps_the_layers_of_the_named_shapes():
    picked = benchmark.select_shapes(benchmark.LLAMA_SHAPES, ["1024x4096", "1024X8192"])
    assert picked == {"Llama-2-70B": [("k/v_proj", 1024, 8192)], "Llama-3-8B": [("k/v_proj", 1024, 4096)]}
    with pytest.raises(ValueError, match="NxK"):
        benchmark.select_shapes(benchmark.LLAMA_SHAPES, ["1024-4096"])
    with pytest.raises(ValueError, match=r"\[\(1000, 4096\)\] are not in the grid"):
        benchmark.select_shapes(benchmark.LLAMA_SHAPES, ["1000x4096"])


def _part(sha: str, gpu: str, shape: str, speedups: dict[int, float]) -> dict:
    n, k = benchmark.parse_shape(shape)
    rows = [
        {"provider": "ours_auto", "n": n, "k": k, "m": m, "speedup": s, "graph_speedup": s, "stream_speedup": s}
        for m, s in speedups.items()
    ]
    return {"env": {"git_sha": sha, "gpu": gpu}, "ceilings": {"copy_tb_s": 4.0}, "shapes": {shape: ["L"]}, "rows": rows}


def test_merge_parts_recomputes_the_summary_over_every_part():
    a = _part("abc", "H200", "1024x4096", {1: 1.2, 16: 1.0, 512: 0.8})
    b = _part("abc", "H200", "4096x4096", {1: 1.6, 16: 1.5, 2048: 1.7})
    merged = benchmark.merge_parts([a, b], ["a.json", "b.json"])
    assert list(merged["shapes"]) == ["1024x4096", "4096x4096"]
    assert len(merged["rows"]) == 6
    assert merged["summary"]["graph"] == {"M<=16": 1.35, "M 32-256": None, "M>=1024": 1.7, "min_any_m": 0.8}
    assert [p["file"] for p in merged["parts"]] == ["a.json", "b.json"]


@pytest.mark.parametrize(
    ("second", "match"),
    [
        (_part("def", "H200", "4096x4096", {1: 1.5}), "differ in git_sha"),
        (_part("abc", "H100", "4096x4096", {1: 1.5}), "differ in gpu"),
        (_part("abc", "H200", "1024x4096", {1: 1.5}), "1024x4096 is in both"),
    ],
)
def test_merge_parts_refuses_parts_of_two_runs_or_a_shape_twice(second, match):
    with pytest.raises(ValueError, match=match):
        benchmark.merge_parts([_part("abc", "H200", "1024x4096", {1: 1.2}), second], ["a.json", "b.json"])
