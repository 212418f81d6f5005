"""Fused score + N:M mask, and score + 2:4 mask + pack (``kernels/nm_mask.py``), with their torch references.

The score is ``|W| · scale`` (Wanda: ``scale`` = the per-column activation norm ‖X_j‖; ``None`` = magnitude),
computed in fp32 the same way on every path, so the masks match ``sparse_llm.masks.nm_mask`` bit-exactly,
ties included (equal scores keep the lower column index).

NaN / Inf: the scale (K values) is checked before launch; the weight is checked by the kernel during its one
read of W (a separate ``isfinite`` pass would double the memory traffic), and the launcher raises before it
returns anything, so a mask computed from a NaN is never handed out.
"""

from __future__ import annotations

from typing import Literal

import torch
import triton

from sparse_llm.format import Sparse24Weight, check_dense_2to4_input, pack_2to4_reference
from sparse_llm.kernels import nm_mask as nm_kernels
from sparse_llm.masks import nm_mask

Impl = Literal["triton", "torch"] | None

SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NON_FINITE_MESSAGE = (
    "score |w|·scale is NaN or Inf: the weight holds NaN/Inf (or the product overflows float32); "
    "a mask computed from it would be meaningless"
)


def resolve_impl(impl: Impl, device: torch.device) -> str:
    """``impl`` if given, else Triton for CUDA tensors and the torch reference elsewhere."""
    if impl is None:
        return "triton" if device.type == "cuda" else "torch"
    if impl not in ("triton", "torch"):
        raise ValueError(f"impl must be 'triton', 'torch' or None, got {impl!r}")
    return impl


def check_weight_and_scale(w: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Raise a clear error unless ``w`` is a 2-D float weight and ``scale`` None or a finite, >= 0 (K,) vector."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {tuple(w.shape)}")
    if w.shape[1] == 0:
        raise ValueError(f"w must have K > 0 columns, got shape {tuple(w.shape)}")
    if w.dtype not in SCORE_DTYPES:
        raise TypeError(f"unsupported weight dtype {w.dtype}; supported: float32, float16, bfloat16")
    if scale is None:
        return
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a torch.Tensor or None, got {type(scale).__name__}")
    if scale.shape != (w.shape[1],):
        raise ValueError(
            f"scale must have shape (K,) = ({w.shape[1]},), got {tuple(scale.shape)} for w {tuple(w.shape)}"
        )
    if scale.dtype not in SCORE_DTYPES:
        raise TypeError(f"unsupported scale dtype {scale.dtype}; supported: float32, float16, bfloat16")
    if scale.device != w.device:
        raise ValueError(f"scale is on {scale.device} but w is on {w.device}")
    # One host sync on K values (NaN fails both comparisons). A negative scale would invert the ranking.
    if not bool(((scale >= 0) & (scale <= torch.finfo(scale.dtype).max)).all()):
        raise ValueError("scale must be finite and >= 0 (it is an activation norm); it holds NaN, Inf or negatives")


def score_reference(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """fp32 scores |w| (· scale): exactly the values the kernels compute in registers."""
    score = w.float().abs()
    if scale is not None:
        score = score * scale.float()
    if not bool(torch.isfinite(score).all()):
        raise ValueError(NON_FINITE_MESSAGE)
    return score


def score_nm_mask_reference(w: torch.Tensor, scale: torch.Tensor | None, n: int = 2, m: int = 4) -> torch.Tensor:
    """Plain torch: ``masks.nm_mask(score_reference(w, scale), n, m)``."""
    check_weight_and_scale(w, scale)
    return nm_mask(score_reference(w, scale), n, m)


def score_pack_24_reference(w: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: the 2:4 score mask, then ``format.pack_2to4_reference`` of the masked weight.

    The kept positions are the two chosen by the score even where a kept weight is 0. Since scores are >= 0 and
    ties keep the lower column, a kept zero-scored position is always one of the lowest zero positions of the
    masked weight, so the format's filler rule picks exactly the same two: the packed pair describes the mask.
    """
    check_dense_2to4_input(w)
    mask = score_nm_mask_reference(w, scale, 2, 4)
    return pack_2to4_reference(torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)))


def _launch_args(w: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if w.stride(1) != 1:
        w = w.contiguous()
    # The kernel ignores the scale pointer without HAS_SCALE; any fp32 tensor on the device will do.
    scale32 = scale.float().contiguous() if scale is not None else w.new_empty(1, dtype=torch.float32)
    bad = torch.zeros(1, dtype=torch.int32, device=w.device)
    return w, scale32, bad


@torch.library.custom_op("sparse_llm::score_nm_mask", mutates_args=())
def _score_nm_mask_op(w: torch.Tensor, scale: torch.Tensor | None, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, k = w.shape
    w, scale32, bad = _launch_args(w, scale)
    mask = torch.empty(rows, k, dtype=torch.bool, device=w.device)
    grid = (triton.cdiv(rows, nm_kernels.BLOCK_N), triton.cdiv(k, nm_kernels.BLOCK_K))
    nm_kernels.score_nm_mask_kernel[grid](
        w, scale32, mask.view(torch.uint8), bad, rows, k, w.stride(0),
        HAS_SCALE=scale is not None, KEEP=n, M=m, BLOCK_N=nm_kernels.BLOCK_N, BLOCK_K=nm_kernels.BLOCK_K,
        num_warps=nm_kernels.NUM_WARPS,
    )  # fmt: skip
    return mask, bad


@_score_nm_mask_op.register_fake
def _(w: torch.Tensor, scale: torch.Tensor | None, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(w, dtype=torch.bool), w.new_empty(1, dtype=torch.int32)


@torch.library.custom_op("sparse_llm::score_pack_24", mutates_args=())
def _score_pack_24_op(w: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, k = w.shape
    w, scale32, bad = _launch_args(w, scale)
    values = torch.empty(rows, k // 2, dtype=w.dtype, device=w.device)
    meta = torch.empty(rows, k // 16, dtype=torch.int16, device=w.device)
    grid = (triton.cdiv(rows, nm_kernels.BLOCK_N), triton.cdiv(k, nm_kernels.BLOCK_K))
    nm_kernels.score_pack24_kernel[grid](
        w, scale32, values, meta, bad, rows, k, w.stride(0),
        HAS_SCALE=scale is not None, BLOCK_N=nm_kernels.BLOCK_N, BLOCK_K=nm_kernels.BLOCK_K,
        num_warps=nm_kernels.NUM_WARPS,
    )  # fmt: skip
    return values, meta, bad


@_score_pack_24_op.register_fake
def _(w: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, k = w.shape
    return w.new_empty(rows, k // 2), w.new_empty(rows, k // 16, dtype=torch.int16), w.new_empty(1, dtype=torch.int32)


def _check_nm(w: torch.Tensor, n: int, m: int, impl: str) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"N:M needs integers 0 < n < m, got n={n}, m={m}")
    if w.shape[1] % m:
        raise ValueError(f"K = {w.shape[1]} (w {tuple(w.shape)}) is not divisible by m={m}")
    # The kernel reshapes each tile into groups of m: m must be a power of two dividing BLOCK_K.
    if impl == "triton" and (m & (m - 1) or nm_kernels.BLOCK_K % m):
        raise ValueError(f"the Triton N:M kernel needs m a power of two <= {nm_kernels.BLOCK_K}, got m={m}")


def score_nm_mask(
    w: torch.Tensor, scale: torch.Tensor | None = None, n: int = 2, m: int = 4, *, impl: Impl = None
) -> torch.Tensor:
    """Bool (N, K) mask keeping the ``n`` largest scores ``|w|·scale`` of every ``m`` consecutive columns.

    ``scale`` is a (K,) column scale (Wanda: ‖X_j‖), ``None`` for plain magnitude. Equal scores keep the lower
    column. ``impl`` forces ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) or ``"torch"``; by default
    CUDA tensors use the fused kernel (one read of W, no score tensor) and others the reference.
    Bit-exact with ``sparse_llm.masks.nm_mask`` of the fp32 scores.
    """
    check_weight_and_scale(w, scale)
    impl = resolve_impl(impl, w.device)
    _check_nm(w, n, m, impl)
    if impl == "torch":
        return score_nm_mask_reference(w, scale, n, m)
    mask, bad = _score_nm_mask_op(w, scale, n, m)
    if bad.item():
        raise ValueError(NON_FINITE_MESSAGE)
    return mask


def score_pack_24(w: torch.Tensor, scale: torch.Tensor | None = None, *, impl: Impl = None) -> Sparse24Weight:
    """Score, 2:4-mask and pack ``w`` in one pass: the ``Sparse24Weight`` of ``w * score_nm_mask(w, scale)``.

    Values and metadata are bit-exact with ``score_pack_24_reference`` (the format's packer applied to the masked
    weight). ``impl`` as in :func:`score_nm_mask`.
    """
    check_weight_and_scale(w, scale)
    check_dense_2to4_input(w)
    impl = resolve_impl(impl, w.device)
    if impl == "torch":
        values, meta = score_pack_24_reference(w, scale)
    else:
        values, meta, bad = _score_pack_24_op(w, scale)
        if bad.item():
            raise ValueError(NON_FINITE_MESSAGE)
    return Sparse24Weight._trusted(values, meta)  # valid by construction: skip decoding the metadata again
