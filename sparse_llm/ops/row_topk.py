"""Fused score + exact per-row top-k mask (``kernels/row_topk.py``), with its torch reference.

Wanda's unstructured mask: per output row, prune exactly ``masks.pruned_count(K, sparsity)`` of the smallest
scores ``|W|·scale``; equal scores keep the lower column index. The kernel selects the threshold by bisection on
the fp32 bit patterns (no sort) and matches ``sparse_llm.masks.row_topk_mask`` bit-exactly.
NaN / Inf are handled as in :mod:`sparse_llm.ops.nm_mask`: scale checked before launch, W during the kernel's
read, and the launcher raises before returning.
"""

from __future__ import annotations

import torch
import triton

from sparse_llm.kernels import row_topk as topk_kernels
from sparse_llm.masks import pruned_count, row_topk_mask
from sparse_llm.ops.nm_mask import NON_FINITE_MESSAGE, Impl, check_weight_and_scale, resolve_impl, score_reference


def score_row_topk_mask_reference(w: torch.Tensor, scale: torch.Tensor | None, sparsity: float) -> torch.Tensor:
    """Plain torch: ``masks.row_topk_mask(score_reference(w, scale), sparsity)`` (a full stable sort per row)."""
    check_weight_and_scale(w, scale)
    return row_topk_mask(score_reference(w, scale), sparsity)


@torch.library.custom_op("sparse_llm::score_row_topk_mask", mutates_args=())
def _score_row_topk_op(
    w: torch.Tensor, scale: torch.Tensor | None, keep: int, max_resident_k: int, chunk_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, k = w.shape
    if w.stride(1) != 1:
        w = w.contiguous()
    # The kernels ignore the scale pointer without HAS_SCALE; any fp32 tensor on the device will do.
    scale32 = scale.float().contiguous() if scale is not None else w.new_empty(1, dtype=torch.float32)
    bad = torch.zeros(1, dtype=torch.int32, device=w.device)
    mask = torch.empty(rows, k, dtype=torch.bool, device=w.device)
    args = (w, scale32, mask.view(torch.uint8), bad, k, keep, w.stride(0))
    if k <= max_resident_k:
        block_k = triton.next_power_of_2(k)
        topk_kernels.row_topk_resident_kernel[(rows,)](
            *args, HAS_SCALE=scale is not None, BLOCK_K=block_k, num_warps=topk_kernels.resident_num_warps(block_k)
        )
    else:
        topk_kernels.row_topk_chunked_kernel[(rows,)](
            *args, HAS_SCALE=scale is not None, BLOCK_K=chunk_k, num_warps=topk_kernels.resident_num_warps(chunk_k)
        )
    return mask, bad


@_score_row_topk_op.register_fake
def _(
    w: torch.Tensor, scale: torch.Tensor | None, keep: int, max_resident_k: int, chunk_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(w, dtype=torch.bool), w.new_empty(1, dtype=torch.int32)


def score_row_topk_mask(
    w: torch.Tensor,
    scale: torch.Tensor | None = None,
    sparsity: float = 0.5,
    *,
    impl: Impl = None,
    max_resident_k: int = topk_kernels.MAX_RESIDENT_K,
    chunk_k: int = topk_kernels.CHUNK_K,
) -> torch.Tensor:
    """Bool (N, K) mask: per row, the ``pruned_count(K, sparsity)`` smallest scores ``|w|·scale`` are False.

    ``scale`` is a (K,) column scale (Wanda: ‖X_j‖), ``None`` for plain magnitude. Equal scores keep the lower
    column. ``impl`` forces ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) or ``"torch"``; by default
    CUDA tensors use the fused selection kernel and others the reference. Rows longer than ``max_resident_k``
    columns use the chunked kernel, ``chunk_k`` (a power of two) columns at a time, scores recomputed from W on
    each pass instead of held in registers.
    """
    check_weight_and_scale(w, scale)
    k = w.shape[1]
    keep = k - pruned_count(k, sparsity)  # also validates 0 < sparsity < 1
    if resolve_impl(impl, w.device) == "torch":
        return score_row_topk_mask_reference(w, scale, sparsity)
    if w.shape[0] == 0:
        return torch.empty_like(w, dtype=torch.bool)
    if chunk_k < 16 or chunk_k & (chunk_k - 1):
        raise ValueError(f"chunk_k must be a power of two >= 16, got {chunk_k}")
    mask, bad = _score_row_topk_op(w, scale, keep, max_resident_k, chunk_k)
    if bad.item():
        raise ValueError(NON_FINITE_MESSAGE)
    return mask
