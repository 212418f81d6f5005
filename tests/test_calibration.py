"""Finding decoder blocks generically, capturing the first block's inputs, replaying block by block."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sparse_llm.calibration import capture_block_inputs, check_token_windows, find_decoder_blocks, run_block_

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=96, max_position_embeddings=48)  # fmt: skip


def tiny(kind: str) -> nn.Module:
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**CONFIG)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_finds_decoder_layers(kind):
    model = tiny(kind)
    name, blocks = find_decoder_blocks(model)
    assert name == "model.layers" and blocks is model.model.layers


def test_outermost_list_wins_over_inner_lists():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    model = nn.Module()
    model.blocks = nn.ModuleList(Block() for _ in range(2))
    assert find_decoder_blocks(model)[0] == "blocks"


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="no decoder blocks"):
        find_decoder_blocks(nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10)))
    mixed = nn.Module()
    mixed.layers = nn.ModuleList([nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4))])
    with pytest.raises(ValueError, match="no decoder blocks"):
        find_decoder_blocks(mixed)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_replaying_blocks_reproduces_the_model(kind, batch_size):
    model = tiny(kind)
    ids = torch.randint(0, 96, (6, 17))
    _, blocks = find_decoder_blocks(model)
    inputs = capture_block_inputs(model, blocks, ids, batch_size)
    reference = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(inputs.hidden, reference[0], rtol=0, atol=0)
    for index, block in enumerate(blocks):
        run_block_(block, inputs, index)
        if index + 1 < len(blocks):
            torch.testing.assert_close(inputs.hidden, reference[index + 1], rtol=1e-5, atol=1e-5)
    # transformers' last hidden state is after the final norm.
    torch.testing.assert_close(model.model.norm(inputs.hidden), reference[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (torch.rand(2, 8), TypeError, "integer token ids"),
        (torch.zeros(8, dtype=torch.long), ValueError, "shape"),
        (torch.zeros(2, 1, dtype=torch.long), ValueError, "shape"),
        (torch.zeros(2, 49, dtype=torch.long), ValueError, "longer than the model's context 48"),
        (torch.full((2, 8), 96), ValueError, "outside"),
        (torch.full((2, 8), -1), ValueError, "outside"),
    ],
)
def test_bad_calibration_is_a_clear_error(ids, error, match):
    with pytest.raises(error, match=match):
        check_token_windows(ids, tiny("llama"))


def test_batch_size_must_divide_windows():
    model = tiny("llama")
    with pytest.raises(ValueError, match="batch_size"):
        capture_block_inputs(model, model.model.layers, torch.zeros(5, 8, dtype=torch.long), 2)


def test_nan_activations_are_reported_with_the_block():
    model = tiny("llama")
    ids = torch.randint(0, 96, (2, 8))
    inputs = capture_block_inputs(model, model.model.layers, ids)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    run_block_(model.model.layers[0], inputs, 0)
    with pytest.raises(ValueError, match="NaN or Inf activations at the output of decoder block 1"):
        run_block_(model.model.layers[1], inputs, 1)
    with torch.no_grad():
        model.model.embed_tokens.weight[ids[0, 0]] = float("inf")
    with pytest.raises(ValueError, match="input of decoder block 0"):
        capture_block_inputs(model, model.model.layers, ids)
