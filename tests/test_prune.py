"""prune(): every method and pattern on tiny Llama / Qwen2 models, sequential calibration, selection, errors."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sparse_llm.masks import nm_mask, row_topk_mask
from sparse_llm.prune import measure_sparsity, prune

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)  # fmt: skip
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny(kind: str = "llama", dtype=torch.float32, **overrides) -> nn.Module:
    torch.manual_seed(1)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**CONFIG, **overrides}))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**{**CONFIG, **overrides}))
    return model.to(dtype).eval()


def ids(windows: int = 4, seqlen: int = 24) -> torch.Tensor:
    return torch.randint(0, 96, (windows, seqlen), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.5, "2:4", "4:8"])
def test_every_method_gives_the_exact_pattern(kind, method, sparsity):
    model = tiny(kind)
    embed, head = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    report = prune(model, method, sparsity, calibration=ids())
    assert report["num_layers"] == 2 * len(LINEARS) and report["blocks"] == "model.layers"
    assert [row["name"].rsplit(".", 1)[1] for row in report["layers"][:7]] == list(LINEARS)
    for block in model.model.layers:
        for module in block.modules():
            if isinstance(module, nn.Linear):
                nonzero = module.weight != 0
                if sparsity == 0.5 and method == "wanda":  # compared per output row
                    assert (nonzero.sum(1) == module.in_features // 2).all()
                elif sparsity == 0.5:  # one threshold per matrix (magnitude) or per 128-column block (SparseGPT)
                    assert int(nonzero.sum()) == module.weight.numel() // 2
                else:
                    n, m = (int(v) for v in sparsity.split(":"))
                    assert (nonzero.reshape(module.out_features, -1, m).sum(-1) == n).all()
    assert report["overall_mask_sparsity"] == 0.5
    if sparsity != 0.5:
        assert report["nm_exact"] and report["nm_valid"]
    # Embeddings and lm_head are never pruned (tied or not).
    assert torch.equal(model.model.embed_tokens.weight, embed) and torch.equal(model.lm_head.weight, head)
    assert (report["calibration"] is None) == (method == "magnitude")
    assert set(report["timings"]) == {"capture_s", "forward_s", "statistics_s", "mask_s", "update_s", "total_s"}


def _block_input_sq_norms(model: nn.Module, windows: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    """Σx² of each linear's inputs in ``block`` from a plain forward pass of ``model``."""
    sums, handles = {}, []
    for name in LINEARS:
        parent = model.model.layers[block].self_attn if "proj" in name and name[0] in "qkvo" else None
        linear = getattr(parent or model.model.layers[block].mlp, name)

        def hook(module, args, name=name):
            sums[name] = sums.get(name, 0) + args[0].double().square().sum((0, 1))

        handles.append(linear.register_forward_pre_hook(hook))
    with torch.no_grad():
        for row in windows:
            model(row[None], use_cache=False)
    for handle in handles:
        handle.remove()
    return sums


def test_block_i_is_calibrated_on_the_pruned_blocks_before_it():
    model = tiny("llama")
    dense = tiny("llama")
    windows = ids()
    prune(model, "wanda", 0.5, calibration=windows)
    # Block 1's statistics come from the model whose block 0 is pruned and whose block 1 is still dense.
    hybrid = tiny("llama")
    hybrid.load_state_dict(model.state_dict())
    hybrid.model.layers[1].load_state_dict(dense.model.layers[1].state_dict())
    expected = _block_input_sq_norms(hybrid, windows, 1)
    wrong = _block_input_sq_norms(dense, windows, 1)
    for name in LINEARS:
        linear = getattr(model.model.layers[1].self_attn if name[0] in "qkvo" else model.model.layers[1].mlp, name)
        dense_linear = getattr(
            dense.model.layers[1].self_attn if name[0] in "qkvo" else dense.model.layers[1].mlp, name
        )
        kept = linear.weight != 0
        good = row_topk_mask(dense_linear.weight.abs() * expected[name].sqrt().float(), 0.5)
        bad = row_topk_mask(dense_linear.weight.abs() * wrong[name].sqrt().float(), 0.5)
        assert (kept == good).float().mean() > 0.995, name
        assert not torch.equal(good, bad)


def test_sparsegpt_and_wanda_reconstruct_better_than_magnitude():
    windows = ids(4, 24)
    with torch.no_grad():
        reference = tiny("llama").model(windows).last_hidden_state
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = tiny("llama")
        prune(model, method, "2:4", calibration=windows)
        with torch.no_grad():
            errors[method] = torch.linalg.norm(model.model(windows).last_hidden_state - reference).item()
    assert errors["sparsegpt"] < errors["magnitude"] and errors["wanda"] < errors["magnitude"]


def test_include_and_exclude_select_by_regex():
    model = tiny("llama")
    report = prune(model, "magnitude", "2:4", exclude=[r"mlp\."])
    assert {row["name"].rsplit(".", 1)[1] for row in report["layers"]} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (model.model.layers[0].mlp.up_proj.weight != 0).all()
    report = prune(tiny("llama"), "magnitude", "2:4", include=r"layers\.1\..*down_proj")
    assert [row["name"] for row in report["layers"]] == ["model.layers.1.mlp.down_proj"]
    with pytest.raises(ValueError, match="no nn.Linear"):
        prune(tiny("llama"), "magnitude", "2:4", include="nothing_matches")


def test_bf16_model_keeps_its_dtype_with_fp32_statistics():
    model = tiny("qwen2", torch.bfloat16)
    for method in ("wanda", "sparsegpt"):
        report = prune(model, method, "2:4", calibration=ids())
        assert report["nm_exact"] and report["dtype"] == "bfloat16"
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert measure_sparsity(model)["all_2to4"]


def test_wanda_mask_of_first_block_matches_a_hand_computation():
    model, dense = tiny("llama"), tiny("llama")
    windows = ids()
    prune(model, "wanda", "2:4", calibration=windows)
    sq = _block_input_sq_norms(dense, windows, 0)
    w = dense.model.layers[0].mlp.down_proj.weight
    expected = nm_mask(w.abs() * sq["down_proj"].sqrt().float(), 2, 4)
    assert (expected == (model.model.layers[0].mlp.down_proj.weight != 0)).float().mean() > 0.995


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="obs"), ValueError, "unknown pruning method 'obs'"),
        (dict(sparsity=1.0), ValueError, r"\(0, 1\)"),
        (dict(sparsity=0), ValueError, r"\(0, 1\)"),
        (dict(sparsity="5:4"), ValueError, "0 < N < M"),
        (dict(calibration=None), ValueError, "needs calibration"),
        (dict(calibration=torch.rand(2, 8)), TypeError, "integer token ids"),
        (dict(calibration=torch.zeros(2, 65, dtype=torch.long)), ValueError, "longer than the model's context"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    args = dict(method="wanda", sparsity="2:4", calibration=ids())
    args.update(kwargs)
    model = tiny("llama")
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(error, match=match):
        prune(model, **args)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)


def test_nm_with_k_not_divisible_by_m_fails_before_pruning_anything():
    model = tiny("llama", hidden_size=68, num_attention_heads=2, num_key_value_heads=1)
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(ValueError, match="divisible by 8"):
        prune(model, "magnitude", "4:8")
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)


def test_nan_activations_stop_pruning_with_a_clear_error():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prune(model, "sparsegpt", "2:4", calibration=ids())


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", ["2:4", 0.5])
def test_cuda_prunes_like_the_cpu(method, sparsity):
    # CUDA runs the Triton statistics and mask kernels; the CPU the torch references. Statistics are summed in
    # another order, so near-ties may flip: the masks must still agree almost everywhere.
    cpu, gpu = tiny("llama"), tiny("llama").cuda()
    prune(cpu, method, sparsity, calibration=ids())
    report = prune(gpu, method, sparsity, calibration=ids())
    assert report["overall_mask_sparsity"] == 0.5
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        agree = ((a != 0) == (b.cpu() != 0)).float().mean().item()
        assert agree > 0.99, name


@pytest.mark.gpu
def test_cuda_bf16_model_with_fp32_statistics():
    model = tiny("qwen2", torch.bfloat16).cuda()
    for method in ("wanda", "sparsegpt"):
        report = prune(model, method, "2:4", calibration=ids(8, 32), batch_size=2)
        assert report["nm_exact"] and report["nm_valid"]
    assert measure_sparsity(model)["all_2to4"]


def test_pruned_model_sparsifies_to_the_same_logits():
    from sparse_llm import SparseLinear, sparsify

    model = tiny("llama")
    prune(model, "sparsegpt", "2:4", calibration=ids())
    windows = ids(2, 16)
    with torch.no_grad():
        expected = model(windows).logits
        replaced = sparsify(model)
        got = model(windows).logits
    assert len(replaced) == 14 and isinstance(model.model.layers[0].mlp.down_proj, SparseLinear)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_embedded_model_at_2to4_wanda_and_sparsegpt_beat_magnitude():
    pytest.importorskip("gguf")
    from sparse_llm import data, models
    from sparse_llm.eval import perplexity

    try:
        model, tokenizer = models.load_default_model()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    calibration = data.calibration_windows(tokenizer, nsamples=4, seqlen=256, seed=0)
    windows = data.eval_windows(tokenizer, seqlen=256, n=4)
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ppl = {"dense": perplexity(model, windows)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model.load_state_dict(dense)
        report = prune(model, method, "2:4", calibration=calibration, batch_size=4)
        assert report["num_layers"] == 210 and report["nm_exact"] and measure_sparsity(model)["all_2to4"]
        ppl[method] = perplexity(model, windows)
    assert ppl["dense"] < ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"] / 3, ppl
