"""Small-M backend: Triton kernels that read the packed 2:4 weight (values + meta) directly.

``spmm24_small(x, values, meta, bias)`` computes ``x @ W.T + bias`` for any M (no padding of M), fp16/bf16,
fp32 accumulation. ``values`` may be a strided view (the first half of the cuSPARSELt compressed buffer), so a
layer keeps one copy of its weight. The plain-torch reference is :func:`spmm24_small_reference`; tests and
benchmarks import it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import triton

from sparse_llm.format import unpack_2to4_reference
from sparse_llm.kernels import spmm_small

KERNELS = ("gemv", "select", "dot", "fma")
DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SmallConfig:
    """Launch configuration of the small-M kernels (see ``kernels/spmm_small.py``)."""

    kernel: str  # "gemv" / "select" (no tensor cores, M of 1 to a few) or "dot" (expand in registers + tl.dot)
    block_m: int  # rows of x per program (gemv: always one)
    block_n: int
    block_q: int  # metadata words per K step: BLOCK_K = 16 * block_q (gemv: BLOCK_G = 4 * block_q groups)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter on the CPU: any value works, keep the grid small
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _split_k_for(programs: int, num_q: int, block_q: int, sms: int) -> int:
    """Split K until there are about two programs per SM (small N leaves SMs idle otherwise)."""
    steps = triton.cdiv(num_q, block_q)
    split = 1
    while programs * split < 2 * sms and split * 2 <= steps:
        split *= 2
    return split


def default_config(m: int, n: int, k: int, device: torch.device | None = None) -> SmallConfig:
    """Deterministic launch heuristic by M; ``sparse_llm.tune`` replaces it with measured choices.

    M <= 4: the select kernel (memory-bound, no tensor cores; BLOCK_N 16, BLOCK_K 1024 was the fastest of 8
    configurations at M = 1-2 on 4096x4096 and 28672x8192, H100, bench/NOTES.md, layers); above, the selects per
    kept value grow with M and the dot kernel takes over.
    """
    sms = _sm_count(device) if device is not None else 132
    num_q = k // 16
    if m <= 4:
        block_m = triton.next_power_of_2(m)
        block_n, block_q = 16, (64 if m <= 2 else 32)
        programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
        return SmallConfig("select", block_m, block_n, block_q, _split_k_for(programs, num_q, block_q, sms), 4, 1)
    block_m = min(max(16, triton.next_power_of_2(m)), 64)
    block_n, block_q = 64, 4
    programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    return SmallConfig("dot", block_m, block_n, block_q, _split_k_for(programs, num_q, block_q, sms), 4, 4)


def spmm24_small_reference(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain-torch reference: unpack W and run ``F.linear`` in fp32, result in x's dtype."""
    w = unpack_2to4_reference(values, meta).float()
    out = F.linear(x.float(), w, None if bias is None else bias.float())
    return out.to(x.dtype)


def _check_inputs(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None) -> None:
    n, half = values.shape
    if x.dtype not in DTYPES:
        raise TypeError(f"the small-M 2:4 kernel takes float16 or bfloat16 inputs, got {x.dtype}")
    if x.dtype != values.dtype:
        raise TypeError(f"input dtype {x.dtype} does not match the weight dtype {values.dtype}")
    if x.device != values.device or meta.device != values.device:
        raise ValueError(f"input on {x.device}, weight values on {values.device}, meta on {meta.device}")
    if x.shape[-1] != 2 * half:
        raise ValueError(f"input has {x.shape[-1]} features (shape {tuple(x.shape)}), the weight expects {2 * half}")
    if meta.dtype != torch.int16 or meta.shape != (n, half // 8):
        raise ValueError(f"meta must be int16 of shape {(n, half // 8)}, got {meta.dtype} {tuple(meta.shape)}")
    if values.stride(-1) != 1 or meta.stride(-1) != 1:
        raise ValueError("values and meta need a unit column stride")
    if values.stride(0) % 2 or values.data_ptr() % 4:
        raise ValueError("values rows must start at 4-byte boundaries (even row stride, aligned storage)")
    if bias is not None and (bias.shape != (n,) or bias.device != x.device):
        raise ValueError(f"bias must have shape ({n},) on {x.device}, got {tuple(bias.shape)} on {bias.device}")


def _launch(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None, config: SmallConfig
) -> torch.Tensor:
    m, k = x.shape
    n = values.shape[0]
    split = config.split_k
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    target = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    common = (x, values, meta, bias if bias is not None else values, target, m, n, k)
    strides = (x.stride(0), values.stride(0), meta.stride(0), n)
    if config.kernel == "fma":  # reads values as int32 words (the two kept values of a group)
        if config.block_m != 1:
            raise ValueError(f"the fma kernel takes one row of x per program (block_m=1), got {config.block_m}")
        kernel = spmm_small.spmm24_fma_kernel
        grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
        kernel[grid](
            x, values, meta, bias if bias is not None else values, target, m, n, k, x.stride(0),
            values.stride(0) // 2, meta.stride(0), n, HAS_BIAS=bias is not None, SPLIT_K=split,
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_G=4 * config.block_q, num_warps=config.num_warps,
            num_stages=config.num_stages,
        )  # fmt: skip
    elif config.kernel == "gemv":
        grid = (m, triton.cdiv(n, config.block_n), split)
        spmm_small.spmm24_gemv_kernel[grid](
            *common, *strides, HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK_N=config.block_n,
            BLOCK_G=4 * config.block_q, num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
    else:
        kernel = spmm_small.spmm24_select_kernel if config.kernel == "select" else spmm_small.spmm24_dot_kernel
        grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
        kernel[grid](
            *common, *strides, HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK_M=config.block_m,
            BLOCK_N=config.block_n, BLOCK_Q=config.block_q, num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
    if split > 1:
        total = target.sum(0)  # fixed order: the same bits on every run (atomics would not be)
        if bias is not None:
            total += bias.float()
        out.copy_(total)
    return out


@torch.library.custom_op("sparse_llm::spmm24_small", mutates_args=())
def _spmm24_small_op(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: str,
    block_m: int,
    block_n: int,
    block_q: int,
    split_k: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    config = SmallConfig(kernel, block_m, block_n, block_q, split_k, num_warps, num_stages)
    return _launch(x, values, meta, bias, config)


@_spmm24_small_op.register_fake
def _(x, values, meta, bias, kernel, block_m, block_n, block_q, split_k, num_warps, num_stages):
    return x.new_empty(x.shape[0], values.shape[0])


def spmm24_small(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: SmallConfig | None = None,
    check: bool = True,
) -> torch.Tensor:
    """``x @ W.T + bias`` for W = (values (N, K/2), meta (N, K/16)); x (..., K) fp16/bf16 -> (..., N).

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. ``config`` defaults to
    :func:`default_config` for the call's M. ``check=False`` skips the input checks (callers that did them).
    """
    if check:
        _check_inputs(x, values, meta, bias)
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]):
        x2 = x2.contiguous()
    m, k = x2.shape
    n = values.shape[0]
    if config is None:
        config = default_config(m, n, k, x.device)
    if config.kernel not in KERNELS:
        raise ValueError(f"unknown small-M kernel {config.kernel!r}; expected one of {KERNELS}")
    if torch.compiler.is_compiling():
        out = _spmm24_small_op(
            x2, values, meta, bias, config.kernel, config.block_m, config.block_n, config.block_q, config.split_k,
            config.num_warps, config.num_stages,
        )  # fmt: skip
    else:  # eager: skip the custom-op dispatcher (microseconds that matter at M = 1)
        out = _launch(x2, values, meta, bias, config)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)
