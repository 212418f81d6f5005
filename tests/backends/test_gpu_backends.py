"""GPU backends of SparseLinear (sparse tensor cores, Triton small-M, cuSPARSELt) against F.linear on the masked
dense weight."""

import io
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import random_2to4

from sparse_llm import Sparse24Weight, SparseLinear, backends

pytestmark = pytest.mark.gpu

MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 7, 33, 100, 1000]
TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3}
GPU_BACKENDS = ["triton_small", "cusparselt"]


def _layer(n: int, k: int, dtype: torch.dtype, bias: bool) -> tuple[SparseLinear, torch.Tensor, torch.Tensor | None]:
    dense = random_2to4(n, k, dtype=torch.float32).to(dtype).cuda()
    b = torch.randn(n, device="cuda").to(dtype) if bias else None
    layer = SparseLinear.from_weight(Sparse24Weight.from_dense(dense), b)
    return layer, dense, b


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _ref(x, dense, bias):
    return F.linear(x.float(), dense.float(), None if bias is None else bias.float())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_backend_matches_dense_for_every_m(backend, dtype, with_bias):
    layer, dense, bias = _layer(304, 544, dtype, with_bias)
    for m in MS:
        x = torch.randn(m, 544, device="cuda").to(dtype)
        out = backends.linear(layer, x, backend=backend)
        assert out.shape == (m, 304) and out.dtype == dtype
        assert torch.isfinite(out).all(), f"{backend} M={m}: non-finite output"
        err = _rel_err(out, _ref(x, dense, bias))
        assert err < TOL[dtype], f"{backend} M={m} {dtype} bias={with_bias}: rel err {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sparse_mma_matches_dense_for_every_m(dtype, with_bias):
    """The mma.sp kernel needs K % 256 == 0; N = 300 is not a multiple of its row tiles."""
    layer, dense, bias = _layer(300, 768, dtype, with_bias)
    for m in MS:
        x = torch.randn(m, 768, device="cuda").to(dtype)
        out = backends.linear(layer, x, backend="sparse_mma")
        assert out.shape == (m, 300) and out.dtype == dtype
        assert torch.isfinite(out).all(), f"sparse_mma M={m}: non-finite output"
        err = _rel_err(out, _ref(x, dense, bias))
        assert err < TOL[dtype], f"sparse_mma M={m} {dtype} bias={with_bias}: rel err {err:.2e}"


def test_sparse_mma_every_tile_and_split():
    from sparse_llm.backends.sparse_mma import TILES, MmaConfig, spmm24_mma

    layer, dense, bias = _layer(200, 1024, torch.bfloat16, True)
    for m in (1, 9, 40, 100):  # 100: two blocks of 64 tokens
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        ref = _ref(x, dense, bias)
        for rows, tokens, stages, warps in sorted(TILES):
            for split in (1, 3, 4):  # 3 of 4 chunks: the last piece is empty and must still count in
                cfg = MmaConfig(rows, tokens, stages, split, warps)
                out = spmm24_mma(x, layer.values, layer.meta, layer.bias, cfg)
                assert _rel_err(out, ref) < 1e-2, cfg
                if split > 1:  # the cluster reduction: the same sums in the same order, so the same bits
                    clustered = spmm24_mma(x, layer.values, layer.meta, layer.bias, replace(cfg, cluster=True))
                    assert torch.equal(clustered, out), cfg
        first = spmm24_mma(x, layer.values, layer.meta, None, MmaConfig(32, 8, 1, 4))
        assert torch.equal(first, spmm24_mma(x, layer.values, layer.meta, None, MmaConfig(32, 8, 1, 4)))


def test_sparse_mma_pipelined_tiles_take_misaligned_rows():
    """The pipelined kernel copies x in 16-byte pieces: a contiguous view 2 bytes off alignment must still work."""
    from sparse_llm.backends.sparse_mma import TILES, MmaConfig, spmm24_mma

    layer, dense, bias = _layer(136, 512, torch.bfloat16, True)
    flat = torch.randn(37 * 512 + 1, device="cuda", dtype=torch.bfloat16)
    x = flat[1:].view(37, 512)
    assert x.is_contiguous() and x.data_ptr() % 16
    ref = _ref(x, dense, bias)
    for rows, tokens, stages, warps in sorted(t for t in TILES if t[2] >= 3):
        out = spmm24_mma(x, layer.values, layer.meta, layer.bias, MmaConfig(rows, tokens, stages, 2, warps))
        assert _rel_err(out, ref) < 1e-2, (rows, tokens, stages, warps)


def test_sparse_mma_refuses_what_it_cannot_run():
    layer, _, _ = _layer(64, 544, torch.bfloat16, False)
    with pytest.raises(RuntimeError, match="divisible by 256"):
        backends.linear(layer, torch.randn(2, 544, device="cuda", dtype=torch.bfloat16), backend="sparse_mma")
    from sparse_llm.backends.sparse_mma import MmaConfig, spmm24_mma

    layer, _, _ = _layer(64, 512, torch.bfloat16, False)
    x = torch.randn(2, 512, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no sparse tensor-core kernel"):
        spmm24_mma(x, layer.values, layer.meta, None, MmaConfig(64, 32, 2, 1))
    with pytest.raises(ValueError, match="float16/bfloat16"):
        spmm24_mma(x.float(), layer.values, layer.meta)


@pytest.mark.parametrize("backend", GPU_BACKENDS + ["sparse_mma", None])
def test_3d_and_non_contiguous_inputs(backend):
    layer, dense, bias = _layer(256, 512, torch.bfloat16, True)
    layer.backend = backend
    x3 = torch.randn(3, 5, 512, device="cuda", dtype=torch.bfloat16)
    out = layer(x3)
    assert out.shape == (3, 5, 256)
    assert _rel_err(out, _ref(x3, dense, bias)) < 1e-2
    x_nc = torch.randn(1024, 40, device="cuda", dtype=torch.bfloat16).t()[:, :512]  # strided, not contiguous
    x_nc = x_nc[::2]  # (20, 512) with a row stride of 2
    assert not x_nc.is_contiguous()
    assert _rel_err(layer(x_nc), _ref(x_nc, dense, bias)) < 1e-2


@pytest.mark.parametrize("backend", GPU_BACKENDS + ["sparse_mma", None])
@pytest.mark.parametrize("m", [1, 33, 300, 4096])
def test_a_call_never_waits_for_the_gpu(backend, m):
    """After the first call at an M (plans, algorithm search, compilation), a call makes no synchronizing CUDA call
    that torch can see (``set_sync_debug_mode("error")`` raises on one): dispatch is host time only."""
    layer, dense, bias = _layer(512, 1024, torch.bfloat16, True)
    layer.backend = backend
    x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    first = layer(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = layer(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(again, first)
    assert _rel_err(again, _ref(x, dense, bias)) < 1e-2


def test_compressed_head_is_the_values_for_full_groups():
    """Every group with exactly 2 non-zeros: cuSPARSELt's first half must equal our values bit for bit."""
    from sparse_llm.backends.cusparselt import compress_values

    n, k = 384, 768
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16).abs() + 0.1  # no zeros before pruning
    keep = torch.rand(n, k // 4, 4, device="cuda").argsort(-1) < 2
    packed = Sparse24Weight.from_dense(w * keep.reshape(n, k))
    compressed, meta = compress_values(packed.values, packed.meta)
    assert meta is packed.meta
    assert torch.equal(compressed[: n * k // 2].view(torch.int16), packed.values.flatten().view(torch.int16))


def test_one_copy_and_memory_budget():
    n, k = 512, 1024
    layer, dense, _ = _layer(n, k, torch.bfloat16, False)
    dense_before = layer.dense_weight()
    layer(torch.randn(4096, k, device="cuda", dtype=torch.bfloat16))  # cuSPARSELt prepares the module
    state = layer._sparse_llm_cusparselt
    assert state is not None
    assert layer.values.untyped_storage().data_ptr() == state.compressed.untyped_storage().data_ptr()
    # (values view, meta) still describe the same weight, whichever zero positions cuSPARSELt kept
    assert torch.equal(layer.dense_weight(), dense_before)
    held = state.compressed.untyped_storage().nbytes() + layer.meta.untyped_storage().nbytes()
    assert held <= 0.63 * dense.numel() * dense.element_size(), held / (dense.numel() * 2)
    # the Triton kernel reads the same bytes
    x = torch.randn(3, k, device="cuda", dtype=torch.bfloat16)
    assert _rel_err(backends.linear(layer, x, backend="triton_small"), _ref(x, dense, None)) < 1e-2


def test_state_dict_saves_plain_values():
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    n, k = 256, 512
    layer, dense, _ = _layer(n, k, torch.bfloat16, True)
    layer(torch.randn(2048, k, device="cuda", dtype=torch.bfloat16))
    sd = layer.state_dict()
    assert sd["values"].shape == (n, k // 2)
    assert sd["values"].untyped_storage().nbytes() == n * k // 2 * 2
    buf = io.BytesIO()
    torch.save(sd, buf)
    plain = {name: t.clone() for name, t in sd.items()}
    buf_plain = io.BytesIO()
    torch.save(plain, buf_plain)
    assert abs(len(buf.getvalue()) - len(buf_plain.getvalue())) < 4096  # no compressed buffer written
    loaded = st_load(st_save({name: t.contiguous() for name, t in sd.items()}))
    assert torch.equal(loaded["values"].cuda(), layer.values)
    # load_state_dict in place (values is a view) invalidates the compressed weight
    other, other_dense, other_bias = _layer(n, k, torch.bfloat16, True)
    layer.load_state_dict(other.state_dict())
    x = torch.randn(2048, k, device="cuda", dtype=torch.bfloat16)
    assert _rel_err(layer(x), _ref(x, other_dense, other_bias)) < 1e-2


@pytest.mark.parametrize("backend", ["sparse_mma", "cusparselt", None])
def test_repeat_calls_run_a_plan_that_follows_the_weight(backend):
    """The second call of a shape runs the layer's plan, with the first call's bits; a weight loaded in place (the
    compressed copy of cuSPARSELt is then stale) or assigned makes the next call bind again, with the new result."""
    n, k = 512, 1024
    layer, dense, bias = _layer(n, k, torch.bfloat16, True)
    layer.backend = backend
    for shape in ((1, k), (33, k), (2, 3, k), (2048, k)):
        # fresh layers to load from: after an assign, the layer shares the third layer's tensors, and the next
        # round's in-place loads would write into them
        other, other_dense, other_bias = _layer(n, k, torch.bfloat16, True)
        third, third_dense, third_bias = _layer(n, k, torch.bfloat16, True)
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        layer.load_state_dict({"values": Sparse24Weight.from_dense(dense).values,
                               "meta": Sparse24Weight.from_dense(dense).meta, "bias": bias})  # fmt: skip
        first = layer(x)
        assert backends.plan_of(layer, x) is not None, f"{shape}: no plan after a call"
        again = layer(x)
        assert torch.equal(first, again) and _rel_err(again, _ref(x, dense, bias)) < 1e-2
        layer.load_state_dict(other.state_dict())  # in place
        assert backends.plan_of(layer, x) is None
        assert _rel_err(layer(x), _ref(x, other_dense, other_bias)) < 1e-2
        assert _rel_err(layer(x), _ref(x, other_dense, other_bias)) < 1e-2  # (its new plan)
        layer.load_state_dict(third.state_dict(), assign=True)
        assert _rel_err(layer(x), _ref(x, third_dense, third_bias)) < 1e-2
        assert _rel_err(layer(x), _ref(x, third_dense, third_bias)) < 1e-2


def test_plans_off_give_the_same_bits(monkeypatch):
    layer, _, _ = _layer(512, 1024, torch.bfloat16, True)
    xs = [torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16) for m in (1, 100, 4096)]
    with_plans = [(layer(x), layer(x)) for x in xs]
    monkeypatch.setattr(backends, "USE_PLANS", False)
    for x, (first, planned) in zip(xs, with_plans, strict=True):
        assert torch.equal(layer(x), first) and torch.equal(planned, first)


def test_dtype_change_invalidates_state():
    layer, dense, bias = _layer(256, 512, torch.bfloat16, True)
    x = torch.randn(2048, 512, device="cuda", dtype=torch.bfloat16)
    layer(x)
    layer.half()
    out = layer(x.half())
    assert _rel_err(out, _ref(x.half(), dense.half(), bias.half())) < 5e-3


@pytest.mark.parametrize("m", [1, 16, 100, 2048])
def test_cuda_graph_capture(m):
    layer, dense, bias = _layer(512, 1024, torch.bfloat16, True)
    static_x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    eager = layer(static_x)  # warm-up: plans, algorithm search, Triton compilation
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layer(static_x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    static_x.copy_(torch.randn_like(static_x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, layer(static_x))


@pytest.mark.parametrize("m", [1, 2048])
def test_torch_compile(m):
    layer, dense, bias = _layer(256, 512, torch.bfloat16, True)
    x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)
    compiled = torch.compile(layer)
    assert torch.equal(compiled(x), eager)


@pytest.mark.parametrize("m", [1, 100, 2048])
def test_torch_compile_is_one_graph_once_m_was_seen(m):
    """After one eager call at this M (the dispatch decision is cached on the layer), the compiled layer is a single
    graph: fullgraph=True raises on any graph break (the per-module cache once broke it at every call)."""
    layer, dense, bias = _layer(256, 512, torch.bfloat16, True)
    x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), eager)
    assert _rel_err(eager, F.linear(x, dense, bias)) < 1e-2


def test_dispatch_by_m_is_inspectable():
    layer, _, _ = _layer(256, 512, torch.bfloat16, False)
    small = backends.select(layer, torch.randn(1, 512, device="cuda", dtype=torch.bfloat16))
    large = backends.select(layer, torch.randn(16384, 512, device="cuda", dtype=torch.bfloat16))
    status = backends.status()
    assert small.name == ("sparse_mma" if status["sparse_mma"] else "triton_small"), status["sparse_mma_reason"]
    assert large.name == ("cusparselt" if status["cusparselt"] else "triton_small")


def test_extension_status_and_wrong_inputs():
    status = backends.status()
    assert status["cusparselt"], f"cuSPARSELt fast path is off: {status['cusparselt_reason']}"
    assert status["sparse_mma"], f"sparse tensor-core kernel is off: {status['sparse_mma_reason']}"
    assert status["cusparselt_version"] >= 500
    layer, _, _ = _layer(256, 512, torch.bfloat16, False)
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(4, 512, device="cuda", dtype=torch.float16))
    with pytest.raises(RuntimeError, match="cpu"):
        layer(torch.randn(4, 512, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="CUDA input"):
        backends.linear(layer.cpu(), torch.randn(4, 512, dtype=torch.bfloat16), backend="cusparselt")


def test_extension_checks_raise_instead_of_crashing():
    """A failed check inside the CUDA extensions (TORCH_CHECK) reaches Python as a RuntimeError that names the
    problem. One raised by the warpgroup extension (a JIT build) ended its process with a segmentation fault in the
    nineteenth round (bench/NOTES.md): run in a child process, so a crash fails this test and not the whole run."""
    code = textwrap.dedent(
        """
        import torch
        from sparse_llm.backends._build import load_mma_extension, load_wgmma_extension, wgmma_status
        x = torch.zeros(4, 256, dtype=torch.bfloat16)  # on the CPU: the operand checks refuse it
        values = torch.zeros(64, 128, dtype=torch.bfloat16, device="cuda")
        meta = torch.zeros(64, 16, dtype=torch.int16, device="cuda")
        calls = [("mma", load_mma_extension().spmm24_mma, (16, 8, 1, 1, 4, False))]
        if wgmma_status()["available"]:
            calls.append(("wgmma", load_wgmma_extension().spmm24_wgmma, (8, 1, 1, 1, 1)))
        for name, fn, args in calls:
            try:
                fn(x, values, meta, None, *args)
            except RuntimeError as err:
                assert "must be CUDA tensors" in str(err), err
                print(name, "raised")
            else:
                raise SystemExit(name + ": no error for a CPU input")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    assert "mma raised" in done.stdout, done.stdout


def test_sparse_mma_split_k_first_used_inside_graph_capture():
    """Split-K counters first needed while a stream is being captured: each graph must zero its own, so graphs
    replayed in any order (the second one first here) give the right product."""
    from sparse_llm.backends.sparse_mma import MmaConfig, spmm24_mma

    layer, dense, _ = _layer(96, 1024, torch.bfloat16, False)
    xs = [torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16) for m in (3, 40, 5)]
    stream = torch.cuda.Stream()
    graphs, outs = [], []
    cfgs = (MmaConfig(16, 8, 1, 4), MmaConfig(16, 64, 1, 2, 8), MmaConfig(16, 8, 1, 4, 4, cluster=True))
    for x, cfg in zip(xs, cfgs, strict=True):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            outs.append(spmm24_mma(x, layer.values, layer.meta, None, cfg))
        graphs.append(g)
    for i in (1, 0, 2, 1):
        graphs[i].replay()
        torch.cuda.synchronize()
        assert _rel_err(outs[i], _ref(xs[i], dense, None)) < 1e-2, i


@pytest.mark.parametrize("wgmma", [False, True])
def test_split_k_captured_after_an_eager_call_adds_no_node_to_the_graph(wgmma):
    """After a split call outside any capture, captured split calls take their counters from the zeroed reserve: a
    replay runs the product's kernel and nothing else (before, a fill of fresh counters ran before it at every
    replay), and graphs replayed in any order, beside eager calls, stay right."""
    from sparse_llm.backends.sparse_mma import MmaConfig, spmm24_mma, wgmma_config, wgmma_usable

    if wgmma and not wgmma_usable(torch.device("cuda", torch.cuda.current_device())):
        pytest.skip("the warpgroup kernel does not run here")
    layer, dense, _ = _layer(1024, 2048, torch.bfloat16, False)
    if wgmma:
        cfgs = [wgmma_config(8, 1, 4), wgmma_config(64, 1, 3)]
    else:
        cfgs = [MmaConfig(16, 8, 1, 4), MmaConfig(32, 32, 3, 2)]
    xs = [torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16) for m in (5, 70)]
    eager = [spmm24_mma(x, layer.values, layer.meta, None, cfg) for x, cfg in zip(xs, cfgs, strict=True)]
    stream = torch.cuda.Stream()
    graphs, outs = [], []
    for x, cfg in zip(xs, cfgs, strict=True):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            outs.append(spmm24_mma(x, layer.values, layer.meta, None, cfg))
        graphs.append(g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        graphs[1].replay()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert names and all("spmm24" in name for name in names), names
    for i in (1, 0, 1, 0):
        graphs[i].replay()
        again = spmm24_mma(xs[1 - i], layer.values, layer.meta, None, cfgs[1 - i])  # eager, between replays
        torch.cuda.synchronize()
        assert torch.equal(outs[i], eager[i]) and torch.equal(again, eager[1 - i]), i
        assert _rel_err(outs[i], _ref(xs[i], dense, None)) < 1e-2, i


def _wgmma_or_skip():
    from sparse_llm.backends import sparse_mma

    if not sparse_mma.wgmma_usable(torch.device("cuda", torch.cuda.current_device())):
        from sparse_llm.backends._build import wgmma_status

        pytest.skip(f"the warpgroup kernel does not run here: {wgmma_status()['reason']}")
    return sparse_mma


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_wgmma_every_tile_and_split(dtype):
    """Every tile of the warpgroup kernel (clusters sharing W or x included; with W shared, a token tile count that
    is odd gets a block past M) at odd M (tokens past M arrive as zeros), split 1 and 3 of 8 chunks (the last piece
    shorter), with and without bias; runs again give the same bits."""
    sparse_mma = _wgmma_or_skip()
    layer, dense, bias = _layer(512, 1024, dtype, True)
    for m in (1, 9, 40, 100, 300):
        x = torch.randn(m, 1024, device="cuda", dtype=dtype)
        for b in (None, layer.bias):
            ref = _ref(x, dense, None if b is None else bias)
            for tokens, warpgroups, cluster_tokens, cluster_rows in sorted(sparse_mma.WGMMA_TILES):
                for split in (1, 3):
                    cfg = sparse_mma.wgmma_config(tokens, warpgroups, split, (cluster_tokens, cluster_rows))
                    out = sparse_mma.spmm24_mma(x, layer.values, layer.meta, b, cfg)
                    assert _rel_err(out, ref) < TOL[dtype], (m, cfg, b is None)
                    assert torch.equal(out, sparse_mma.spmm24_mma(x, layer.values, layer.meta, b, cfg)), cfg


def test_wgmma_l2_policy_of_w_changes_no_bit():
    """W's copies with the evict-first L2 policy or the default one, with and without L2's 256-byte promotion: the
    same bits, for every tile (clusters that multicast W included), split 1 and 3."""
    sparse_mma = _wgmma_or_skip()
    from sparse_llm.backends._build import load_wgmma_extension

    ext = load_wgmma_extension()
    layer, dense, bias = _layer(512, 1024, torch.bfloat16, True)
    for m in (1, 40, 300):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        for tile in sorted(sparse_mma.WGMMA_TILES):
            for split in (1, 3):
                outs = [ext.spmm24_wgmma(x, layer.values, layer.meta, layer.bias, *tile, split, first, promote)
                        for first in (False, True) for promote in (True, False)]  # fmt: skip
                assert all(torch.equal(outs[0], out) for out in outs[1:]), (m, tile, split)
                assert _rel_err(outs[0], _ref(x, dense, bias)) < 1e-2, (m, tile, split)


@pytest.mark.parametrize("mode", [0, 1, 3])
def test_wgmma_launch_modes_give_the_eager_bits_of_a_chain(mode):
    """Programmatic dependent launch (mode 1: every launch, 3: the selective rule): a chain of layers, each reading
    the previous one's output, while freed outputs are reused by later ones (a kernel that wrote before its wait, or
    read x before it, would see or clobber the previous kernel's data), eager and in a CUDA graph, gives the bits of
    the chain launched plainly; for every tile (clusters included), split 1 and 3, at 7 tokens (decode) and 77."""
    sparse_mma = _wgmma_or_skip()
    from sparse_llm.backends._build import load_wgmma_extension

    ext = load_wgmma_extension()
    layers = [_layer(512, 512, torch.bfloat16, True)[0] for _ in range(3)]
    for layer in layers:
        layer.values.mul_(1 / 16)  # keeps a chain of 16 products finite
    tiles = sorted(sparse_mma.WGMMA_TILES)

    def chain(x):
        for i, tile in enumerate(tiles):
            layer = layers[i % len(layers)]
            x = ext.spmm24_wgmma(x, layer.values, layer.meta, layer.bias, *tile, 1 + 2 * (i % 2), i % 3 == 0, True)
        return x

    previous = sparse_mma.set_launch_mode(0)
    try:
        for m in (7, 77):
            x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
            sparse_mma.set_launch_mode(0)
            plain = chain(x)
            sparse_mma.set_launch_mode(mode)
            eager = chain(x)
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.graph(graph, stream=stream):
                captured = chain(x)
            for _ in range(3):
                graph.replay()
                torch.cuda.synchronize()
                assert torch.equal(captured, plain), (mode, m)
            assert torch.isfinite(plain).all() and plain.abs().max() > 0, m
            assert torch.equal(eager, plain), (mode, m)
    finally:
        sparse_mma.set_launch_mode(previous)


def test_wgmma_takes_misaligned_and_strided_x():
    """The tensor maps need 16-byte aligned rows: a view 2 bytes off, and rows of a wider tensor, still work."""
    sparse_mma = _wgmma_or_skip()
    layer, dense, bias = _layer(128, 512, torch.bfloat16, True)
    flat = torch.randn(37 * 512 + 1, device="cuda", dtype=torch.bfloat16)
    x = flat[1:].view(37, 512)
    wide = torch.randn(37, 640, device="cuda", dtype=torch.bfloat16)[:, 64:576]
    for inp in (x, wide):
        out = sparse_mma.spmm24_mma(inp, layer.values, layer.meta, layer.bias, sparse_mma.wgmma_config(64, 2, 2))
        assert _rel_err(out, _ref(inp, dense, bias)) < 1e-2


def test_wgmma_refuses_what_it_cannot_run():
    sparse_mma = _wgmma_or_skip()
    layer, _, _ = _layer(192, 512, torch.bfloat16, False)
    x = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="out_features by 128"):
        sparse_mma.spmm24_mma(x, layer.values, layer.meta, None, sparse_mma.wgmma_config(64, 2))
    with pytest.raises(ValueError, match="no warpgroup kernel"):
        sparse_mma.spmm24_mma(x, layer.values, layer.meta, None, sparse_mma.wgmma_config(24, 1))
    with pytest.raises(ValueError, match="split must be 1 to 4"):
        sparse_mma.spmm24_mma(x, layer.values, layer.meta, None, sparse_mma.wgmma_config(64, 1, 5))
    with pytest.raises(ValueError, match="float16/bfloat16 input and weight of one dtype"):
        sparse_mma.spmm24_mma(x.half(), layer.values, layer.meta, None, sparse_mma.wgmma_config(64, 1))


def test_wgmma_is_the_untuned_default_and_replays_from_a_graph():
    """On an H100 the untuned sparse_mma backend takes the warpgroup kernel; split-K counters first used inside a
    capture are the graph's own."""
    sparse_mma = _wgmma_or_skip()
    dev = torch.device("cuda", torch.cuda.current_device())
    assert sparse_mma.default_config(16, 4096, 4096, dev).wgmma
    layer, dense, _ = _layer(1024, 4096, torch.bfloat16, False)
    xs = [torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16) for m in (3, 70)]
    cfgs = (sparse_mma.wgmma_config(8, 1, 4), sparse_mma.wgmma_config(128, 2, 2))
    stream = torch.cuda.Stream()
    graphs, outs = [], []
    for x, cfg in zip(xs, cfgs, strict=True):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            outs.append(sparse_mma.spmm24_mma(x, layer.values, layer.meta, None, cfg))
        graphs.append(g)
    for i in (1, 0, 1):
        graphs[i].replay()
        torch.cuda.synchronize()
        assert _rel_err(outs[i], _ref(xs[i], dense, None)) < 1e-2, i
