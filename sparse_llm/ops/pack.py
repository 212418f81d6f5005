"""Launcher of the Triton 2:4 packer (``kernels/pack24.py``); the torch reference is ``format.pack_2to4_reference``."""

from __future__ import annotations

import torch
import triton

from sparse_llm.format import check_dense_2to4_input
from sparse_llm.kernels import pack24


@torch.library.custom_op("sparse_llm::pack_2to4", mutates_args=())
def _pack_2to4_op(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = w.shape
    w = w.contiguous()
    values = torch.empty(n, k // 2, dtype=w.dtype, device=w.device)
    meta = torch.empty(n, k // 16, dtype=torch.int16, device=w.device)
    num_groups = n * k // 4
    err = torch.full((1,), num_groups, dtype=torch.int64, device=w.device)
    grid = (triton.cdiv(n, pack24.BLOCK_R), triton.cdiv(k // 16, pack24.BLOCK_Q))
    pack24.pack_2to4_kernel[grid](
        w, values, meta, err, n, num_groups, K=k, BLOCK_R=pack24.BLOCK_R, BLOCK_Q=pack24.BLOCK_Q,
        num_warps=pack24.NUM_WARPS,
    )
    return values, meta, err


@_pack_2to4_op.register_fake
def _(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = w.shape
    return (
        w.new_empty(n, k // 2),
        w.new_empty(n, k // 16, dtype=torch.int16),
        w.new_empty(1, dtype=torch.int64),
    )


def pack_2to4_triton(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a (N, K) 2:4 weight with the Triton kernel: bit-exact with ``pack_2to4_reference``.

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. Raises ``ValueError`` naming the first
    group (row-major) that holds more than 2 non-zeros.
    """
    check_dense_2to4_input(w)
    n, k = w.shape
    values, meta, err = _pack_2to4_op(w)
    first_bad = int(err.item())
    if first_bad < n * k // 4:
        row, col = divmod(first_bad, k // 4)
        group = w[row, 4 * col : 4 * col + 4]
        raise ValueError(
            f"weight is not 2:4: row {row}, columns {4 * col}..{4 * col + 3} hold {int((group != 0).sum())} "
            "non-zeros (at most 2 per group of 4 along K are allowed)"
        )
    return values, meta
