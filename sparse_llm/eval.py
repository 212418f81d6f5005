"""Perplexity with the WikiText-2 protocol of the Wanda / SparseGPT reference code.

The text is tokenized once and cut into non-overlapping windows of ``seqlen`` (tail dropped; see
``sparse_llm.data.eval_windows``). Each window is scored independently: its mean next-token cross-entropy over
the ``seqlen - 1`` predicted positions. ``ppl = exp(mean over windows of those means)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparse_llm.calibration import check_token_windows


def window_losses(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """(windows,) fp32: the mean next-token loss of each window, in fp32 from the model's logits."""
    check_token_windows(windows, model, what="evaluation windows")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    starts = range(0, windows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    forward_kwargs = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
    try:
        with torch.no_grad():
            for start in starts:
                ids = windows[start : start + batch_size].to(device)
                logits = model(ids, **forward_kwargs).logits
                shifted = logits[:, :-1].float()
                loss = F.cross_entropy(shifted.transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1)
                losses.append(loss.cpu())
    finally:
        model.train(was_training)
    return torch.cat(losses)


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> float:
    """exp(mean over ``windows`` (n, seqlen) of each window's mean next-token loss). Raises on a non-finite loss."""
    losses = window_losses(model, windows, batch_size, progress)
    mean = losses.double().mean().item()
    if not math.isfinite(mean):
        raise ValueError("the model's loss is NaN or Inf on the evaluation windows")
    return math.exp(mean)
