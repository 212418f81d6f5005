"""Perplexity: the reference protocol against a hand computation."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparse_llm.eval import perplexity, window_losses


def tiny() -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=50, max_position_embeddings=32)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_perplexity_matches_hand_computation():
    model = tiny()
    windows = torch.randint(0, 50, (5, 12))
    expected = []
    with torch.no_grad():
        for row in windows:
            logits = model(row[None]).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            expected.append(-logp[torch.arange(11), row[1:]].mean())
    hand = math.exp(torch.stack(expected).mean().item())  # exp of the mean of per-window mean losses
    assert perplexity(model, windows) == pytest.approx(hand, rel=1e-5)
    assert perplexity(model, windows, batch_size=2) == pytest.approx(hand, rel=1e-5)
    assert window_losses(model, windows).shape == (5,)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert perplexity(model, torch.randint(0, 50, (3, 16))) == pytest.approx(50.0, rel=1e-6)


def test_bad_windows_are_clear_errors():
    model = tiny()
    with pytest.raises(TypeError, match="integer token ids"):
        perplexity(model, torch.rand(2, 8))
    with pytest.raises(ValueError, match="longer than the model's context 32"):
        perplexity(model, torch.zeros(1, 33, dtype=torch.long))


def test_nan_model_is_an_error():
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        perplexity(model, torch.randint(0, 50, (2, 8)))
