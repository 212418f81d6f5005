"""Σx² per input column, accumulated in place (``kernels/act_norm.py``), with its torch reference.

The Wanda calibration hook calls :func:`accumulate_sq_norm_` on every captured activation: one read of x in its
own dtype, fp32 sums in registers, no fp32 copy of the activation, deterministic (same inputs, same bits).
"""

from __future__ import annotations

import torch
import triton

from sparse_llm.kernels import act_norm as norm_kernels
from sparse_llm.ops.nm_mask import SCORE_DTYPES, Impl, resolve_impl

NON_FINITE_MESSAGE = "activation holds NaN or Inf (or its Σx² overflows float32); the accumulator was left unchanged"
# Rows per chunk of the reference: bounds its fp32 temporaries to REFERENCE_CHUNK_ROWS x K.
REFERENCE_CHUNK_ROWS = 4096


def _check(acc: torch.Tensor, x: torch.Tensor) -> None:
    if not isinstance(acc, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise TypeError(f"acc and x must be torch.Tensors, got {type(acc).__name__} and {type(x).__name__}")
    if acc.dim() != 1 or acc.dtype != torch.float32 or not acc.is_contiguous():
        raise ValueError(f"acc must be a contiguous float32 (K,) tensor, got {acc.dtype} shape {tuple(acc.shape)}")
    if x.dim() < 1 or x.shape[-1] != acc.shape[0]:
        raise ValueError(f"x must have shape (..., K) with K = {acc.shape[0]} (acc), got {tuple(x.shape)}")
    if x.dtype not in SCORE_DTYPES:
        raise TypeError(f"unsupported activation dtype {x.dtype}; supported: float32, float16, bfloat16")
    if x.device != acc.device:
        raise ValueError(f"x is on {x.device} but acc is on {acc.device}")


def accumulate_sq_norm_reference(acc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Plain torch: ``acc += (x.float() ** 2).sum over all leading dims``, by chunks of rows; returns ``acc``.

    Raises ``ValueError`` (acc unchanged) when the sum is not finite.
    """
    _check(acc, x)
    rows = x.reshape(-1, x.shape[-1])
    total = torch.zeros_like(acc)
    for chunk in rows.split(REFERENCE_CHUNK_ROWS):
        total += chunk.float().square().sum(0)
    if not bool(torch.isfinite(total).all()):
        raise ValueError(NON_FINITE_MESSAGE)
    return acc.add_(total)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the CPU interpreter: a few splits so that the two-stage path is exercised


def split_rows(m: int, k: int, num_sms: int) -> int:
    """Rows per split (a multiple of BLOCK_M): enough (column block, split) programs to fill every SM."""
    col_blocks = triton.cdiv(k, norm_kernels.BLOCK_K)
    wanted = triton.cdiv(norm_kernels.PROGRAMS_PER_SM * num_sms, col_blocks)
    splits = max(1, min(wanted, triton.cdiv(m, norm_kernels.BLOCK_M)))
    rows = triton.cdiv(m, splits)
    return triton.cdiv(rows, norm_kernels.BLOCK_M) * norm_kernels.BLOCK_M


@torch.library.custom_op("sparse_llm::accumulate_sq_norm", mutates_args=("acc",))
def _accumulate_sq_norm_op(acc: torch.Tensor, x: torch.Tensor, skip_on_bad: bool) -> torch.Tensor:
    k = acc.shape[0]
    rows = x.reshape(-1, k)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    m = rows.shape[0]
    bad = torch.zeros(1, dtype=torch.int32, device=acc.device)
    if m == 0:
        return bad
    rows_per_split = split_rows(m, k, _num_sms(acc.device))
    splits = triton.cdiv(m, rows_per_split)
    partials = torch.empty(splits, k, dtype=torch.float32, device=acc.device)
    norm_kernels.sq_norm_partial_kernel[(triton.cdiv(k, norm_kernels.BLOCK_K), splits)](
        rows, partials, bad, m, k, rows.stride(0), rows_per_split,
        BLOCK_M=norm_kernels.BLOCK_M, BLOCK_K=norm_kernels.BLOCK_K, num_warps=norm_kernels.NUM_WARPS,
    )  # fmt: skip
    norm_kernels.sq_norm_reduce_kernel[(triton.cdiv(k, norm_kernels.REDUCE_BLOCK_K),)](
        partials, acc, bad, splits, k, SKIP_ON_BAD=skip_on_bad, BLOCK_K=norm_kernels.REDUCE_BLOCK_K, num_warps=4
    )
    return bad


@_accumulate_sq_norm_op.register_fake
def _(acc: torch.Tensor, x: torch.Tensor, skip_on_bad: bool) -> torch.Tensor:
    return acc.new_empty(1, dtype=torch.int32)


def accumulate_sq_norm_(
    acc: torch.Tensor, x: torch.Tensor, *, impl: Impl = None, check_finite: bool = True
) -> torch.Tensor:
    """Add Σx² over all rows of ``x`` (..., K) to the fp32 (K,) ``acc``, in place; returns ``acc``.

    One pass over ``x`` in its own dtype (fp32 / fp16 / bf16), fp32 accumulation, deterministic. ``impl`` forces
    ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) or ``"torch"``; by default CUDA tensors use the
    kernel and others the reference. With ``check_finite`` (default), raises ``ValueError`` and leaves ``acc``
    unchanged when ``x`` holds NaN/Inf, at the cost of one host sync per call; with ``check_finite=False`` the
    Triton path never syncs and NaN/Inf propagate into ``acc`` (check ``torch.isfinite(acc)`` once at the end).
    """
    _check(acc, x)
    if resolve_impl(impl, acc.device) == "torch":
        return accumulate_sq_norm_reference(acc, x)
    bad = _accumulate_sq_norm_op(acc, x, check_finite)
    if check_finite and bad.item():
        raise ValueError(NON_FINITE_MESSAGE)
    return acc
