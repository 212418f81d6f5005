"""What every pruning method shares: the sparsity pattern, per-layer statistics, the method interface, timers."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SparsityPattern:
    """Unstructured (``n`` and ``m`` None: a fraction of zeros) or N:M (keep ``n`` of every ``m`` along K)."""

    sparsity: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g}"

    def check_layer(self, name: str, weight: torch.Tensor) -> None:
        """Raise when the pattern cannot apply to ``weight`` (N:M needs K divisible by M)."""
        if self.is_nm and weight.shape[-1] % self.m:
            raise ValueError(
                f"{name}: N:M sparsity {self} needs the input dimension K divisible by {self.m}, "
                f"but the weight has shape {tuple(weight.shape)}; exclude this layer or choose another pattern"
            )


def parse_sparsity(value: float | str | SparsityPattern) -> SparsityPattern:
    """Read ``0.5``, ``"0.5"``, ``"2:4"``, ``"4:8"`` (keep N of every M) into a :class:`SparsityPattern`."""
    if isinstance(value, SparsityPattern):
        return value
    if isinstance(value, str) and ":" in value:
        parts = value.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"sparsity {value!r}: an N:M pattern is two integers such as '2:4' or '4:8'") from None
        if not 0 < n < m:
            raise ValueError(f"sparsity {value!r}: N:M needs 0 < N < M (N kept out of every M)")
        return SparsityPattern(1.0 - n / m, n, m)
    if isinstance(value, bool):
        raise TypeError("sparsity must be a float in (0, 1) or an 'N:M' string, got a bool")
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"sparsity {value!r}: expected a float in (0, 1) such as 0.5, or 'N:M' such as '2:4'"
        ) from None
    if not (math.isfinite(fraction) and 0.0 < fraction < 1.0):
        raise ValueError(f"sparsity must be in the open interval (0, 1), got {value!r}")
    return SparsityPattern(fraction)


class LayerStats(ABC):
    """Statistics of one linear's inputs, accumulated over calibration batches."""

    @abstractmethod
    def add(self, x: torch.Tensor) -> None:
        """Accumulate one batch of inputs (..., K)."""

    @abstractmethod
    def check_finite(self, name: str) -> None:
        """Raise a clear error when NaN/Inf activations reached the statistics of layer ``name``."""


class SqNormStats(LayerStats):
    """Wanda's statistic: ``s_j = Σ x_j²`` over every calibration token, fp32."""

    def __init__(self, in_features: int, device: torch.device):
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        from sparse_llm.ops.act_norm import accumulate_sq_norm_

        # No finiteness check per batch (a host sync that stalls the forward pass): check_finite() runs once per
        # layer before its mask is chosen.
        accumulate_sq_norm_(self.sq_norm, x, check_finite=False)
        self.tokens += x.numel() // x.shape[-1]

    def check_finite(self, name: str) -> None:
        if not torch.isfinite(self.sq_norm).all():
            raise ValueError(f"{name}: NaN or Inf in the calibration activations (Σx² per input column)")


class HessianStats(LayerStats):
    """SparseGPT's statistic: ``H = 2/n Σ x xᵀ`` over the n calibration tokens, fp32 (K, K)."""

    def __init__(self, in_features: int, device: torch.device):
        self.xxt = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        self.xxt.addmm_(rows.T, rows)
        self.tokens += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """The scaled Hessian (a new tensor); the scale does not change masks or updates (damping is relative)."""
        if self.tokens == 0:
            raise RuntimeError("no calibration tokens reached this layer")
        return self.xxt * (2.0 / self.tokens)

    def check_finite(self, name: str) -> None:
        if not torch.isfinite(self.xxt).all():
            raise ValueError(f"{name}: NaN or Inf in the calibration activations (Hessian XᵀX)")


class PhaseTimer:
    """Time per named phase. On CUDA, events on the stream (no host synchronization inside the phases, so timing
    hooks in the middle of a forward pass do not stall it); elsewhere the host clock. Phases may nest."""

    def __init__(self, device: torch.device | str | None = None):
        self._totals: dict[str, float] = defaultdict(float)
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.cuda = torch.device(device).type == "cuda" if device is not None else False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((name, start, end))
            return
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._totals[name] += time.perf_counter() - begin

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (waits for the GPU to finish the phases recorded on it)."""
        if self._pending:
            torch.cuda.synchronize()
            for name, start, end in self._pending:
                self._totals[name] += start.elapsed_time(end) / 1e3
            self._pending.clear()
        return dict(self._totals)


class PruningMethod(ABC):
    """A one-shot pruning method: optional input statistics per linear, then a mask (and maybe new weights).

    Subclasses set ``name`` and ``needs_calibration`` and implement :meth:`prune_linear`, which prunes the layer
    in place and returns its bool mask (True = kept).
    """

    name: str = ""
    needs_calibration: bool = True

    def new_stats(self, linear: nn.Linear) -> LayerStats | None:
        """A fresh statistics accumulator for ``linear`` (None when the method needs none)."""
        return None

    @abstractmethod
    def prune_linear(
        self,
        linear: nn.Linear,
        pattern: SparsityPattern,
        stats: LayerStats | None,
        timer: PhaseTimer,
        name: str = "",
    ) -> torch.Tensor:
        """Prune ``linear`` in place with ``stats`` of its inputs; return the bool mask (True = kept)."""


def exact_flat_prune_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``round(sparsity·numel)`` smallest scores of the whole tensor; True = keep.

    One threshold for the whole tensor, exact count: among scores equal to the threshold, the higher flat indices
    are pruned first (ties keep the lower index, the package's tie rule). O(numel), no full sort.
    """
    from sparse_llm.masks import pruned_count

    flat = scores.reshape(-1).float()
    if not torch.isfinite(flat).all():
        raise ValueError("scores contain NaN or Inf: the weights or activations are not finite")
    prune = pruned_count(flat.numel(), sparsity)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if prune == 0:
        return keep.reshape(scores.shape)
    threshold = flat.kthvalue(prune).values
    below = flat < threshold
    keep &= ~below
    at_threshold = (flat == threshold).nonzero().squeeze(1)
    extra = prune - int(below.sum())
    if extra > 0:
        keep[at_threshold[at_threshold.numel() - extra :]] = False
    return keep.reshape(scores.shape)
