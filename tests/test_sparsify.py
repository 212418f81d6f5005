import pytest
import torch
import transformers
from torch import nn

from sparse_llm import SparseLinear, checkpoint, load_sparse, nm_mask, save_sparse, sparsify, unsparsify


def tiny_model(kind: str) -> nn.Module:
    common = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=97, max_position_embeddings=64,
    )
    config = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[kind](**common)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return model


def prune_24_(model: nn.Module) -> None:
    """Magnitude 2:4 on every decoder linear (in place), lm_head untouched."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name != "lm_head":
                module.weight.mul_(nm_mask(module.weight.abs()))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_sparsify_logits_equal_masked_dense_and_unsparsify_restores(kind):
    model = tiny_model(kind)
    prune_24_(model)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        expected = model(ids).logits
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    names = sparsify(model)
    assert sorted(names) == sorted(linears) and len(names) == 14
    assert isinstance(model.get_submodule("model.layers.1.mlp.down_proj"), SparseLinear)
    assert isinstance(model.lm_head, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    restored = unsparsify(model)
    assert sorted(restored) == sorted(linears)
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_include_exclude_by_suffix_and_regex():
    model = tiny_model("llama")
    prune_24_(model)
    names = sparsify(model, include=["q_proj", r".*mlp\.(up|gate)_proj"], exclude=[r"model\.layers\.1\..*"])
    assert sorted(names) == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                             "model.layers.0.self_attn.q_proj"]


def test_non_24_layer_raises_naming_it_and_leaves_model_untouched():
    model = tiny_model("llama")
    prune_24_(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.fill_(1.0)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj"):
        sparsify(model)
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


def test_nothing_matched_raises():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="no nn.Linear matched"):
        sparsify(model, include=["no_such_layer"])


def test_masks_argument_prunes_while_swapping():
    model = tiny_model("llama")
    target = "model.layers.0.mlp.down_proj"
    weight = model.get_submodule(target).weight.detach().clone()
    mask = nm_mask(weight.abs())
    assert sparsify(model, include=[target], masks={target: mask}) == [target]
    assert torch.equal(model.get_submodule(target).dense_weight(), weight * mask)


def test_state_dict_save_load_of_sparsified_model(tmp_path):
    model = tiny_model("qwen2")
    prune_24_(model)
    sparsify(model)
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        expected = model(ids).logits
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    fresh = tiny_model("qwen2")
    prune_24_(fresh)
    sparsify(fresh)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, expected)


def test_safetensors_checkpoint_round_trip_into_dense_model(tmp_path):
    model = tiny_model("llama")
    prune_24_(model)
    names = sparsify(model)
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits
    save_sparse(model, tmp_path / "model.safetensors")
    fresh = tiny_model("llama")  # other random weights, dense layers
    assert sorted(load_sparse(fresh, tmp_path / "model.safetensors")) == sorted(names)
    assert isinstance(fresh.get_submodule(names[0]), SparseLinear)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, expected)


def test_checkpoint_errors_and_atomic_save(tmp_path, monkeypatch):
    model = tiny_model("llama")
    prune_24_(model)
    sparsify(model)
    with pytest.raises(FileNotFoundError, match="no sparse-llm checkpoint"):
        load_sparse(tiny_model("llama"), tmp_path / "missing.safetensors")
    good = save_sparse(model, tmp_path / "m.safetensors")
    before = good.read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(model, good)
    assert good.read_bytes() == before
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a sparse-llm checkpoint"):
        load_sparse(tiny_model("llama"), tmp_path / "other.safetensors")
