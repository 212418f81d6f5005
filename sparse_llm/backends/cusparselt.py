"""Large-M backend: cuSPARSELt through our extension (``csrc/cusparselt_linear.cpp``).

:func:`prepare` compresses a SparseLinear's weight once. cuSPARSELt's compressed buffer starts with the N*K/2 kept
values in row-major order (checked bit-exactly against ``values`` here, every time), so afterwards the module's
``values`` buffer is a view of that first half: the layer holds ONE copy of its weight (values + cuSPARSELt's
metadata + our int16 meta: 0.625 of the dense bytes) and the Triton small-M backend reads the same bytes.

The per-module state lives in a plain (non-persistent) attribute and is keyed on the storage, dtype and device of
``values`` and ``meta``: ``.to()``, ``.half()``, ``load_state_dict`` with ``assign=True`` and the like produce new
tensors and so a recompression. ``load_state_dict`` without ``assign`` copies in place, so a hook drops the state
then too. A state_dict hook saves ``values`` as a plain (N, K/2) tensor, never the whole compressed buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_llm.backends._build import ExtensionUnavailable, load_extension
from sparse_llm.format import meta_indices, unpack_2to4_reference

STATE_ATTR = "_sparse_llm_cusparselt"
DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class CusparseLtState:
    """The compressed weight of one module and the key it was made for."""

    compressed: torch.Tensor  # flat, weight dtype: [N*K/2 values | cuSPARSELt metadata]
    n: int
    k: int
    key: tuple


def _key(module: torch.nn.Module) -> tuple:
    v, m = module.values, module.meta
    return (v.data_ptr(), v.dtype, v.device, tuple(v.shape), m.data_ptr(), m.device)


def shape_supported(n: int, k: int) -> bool:
    """Shapes cuSPARSELt handles: it crashed (not an error) compressing a 4 x 64 weight on the H100; N a multiple
    of 16 and K of 32 (all Llama shapes) worked."""
    return n >= 32 and k >= 32 and n % 16 == 0 and k % 32 == 0


def supports(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether this backend can run the call at all (device, dtype, extension built)."""
    if not (x.is_cuda and x.dtype in DTYPES and module.values.dtype == x.dtype):
        return False
    n, k = module.values.shape[0], 2 * module.values.shape[1]
    if not shape_supported(n, k):
        return False
    try:
        load_extension()
    except ExtensionUnavailable:
        return False
    return True


def _encode_meta(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(N, K/4) low/high indices -> (N, K/16) int16 in the canonical nibble order (sparse_llm/format.py)."""
    n = low.shape[0]
    nibbles = (low | (high << 2)).to(torch.int32).reshape(n, -1, 4)
    shifts = torch.tensor([0, 4, 8, 12], device=low.device, dtype=torch.int32)
    word = (nibbles << shifts).sum(-1)
    return torch.where(word >= 1 << 15, word - (1 << 16), word).to(torch.int16)


def meta_for_values(head: torch.Tensor, values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Metadata that describes the same dense weight with ``head``'s choice of kept values.

    Groups with fewer than 2 non-zeros must still store 2 values; cuSPARSELt may pick other zero positions than
    our format's filler rule (lowest zero positions), which changes the stored order, e.g. (c, 0) instead of
    (0, c). Only those groups get new indices: the non-zero keeps its column, the zero takes a free column on the
    side that keeps the two indices increasing. The dense weight is unchanged (checked by the caller).
    """
    n, half = values.shape
    groups = half // 2
    low, high = meta_indices(meta)
    pairs = head.reshape(n, groups, 2)
    same = (pairs.view(torch.int16) == values.reshape(n, groups, 2).view(torch.int16)).all(-1)
    dense = unpack_2to4_reference(values, meta).reshape(n, groups, 4)
    nonzero = dense != 0
    pos = torch.arange(4, device=values.device)
    p = torch.where(nonzero, pos, 4).amin(-1, keepdim=True)  # the (single) non-zero column
    free_above = torch.where(~nonzero & (pos > p), pos, 4).amin(-1)
    free_below = torch.where(~nonzero & (pos < p), pos, 4).amin(-1)
    p = p.squeeze(-1)
    first, second = pairs[..., 0] != 0, pairs[..., 1] != 0
    new_low = torch.where(first & ~second, p, torch.where(second & ~first, free_below, low))
    new_high = torch.where(first & ~second, free_above, torch.where(second & ~first, p, high))
    new_low = torch.where(same, low, new_low).clamp(max=3)
    new_high = torch.where(same, high, new_high).clamp(max=3)
    return _encode_meta(new_low, new_high)


def compress_values(values: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress the packed weight with cuSPARSELt; returns (flat compressed buffer, metadata for its values).

    The buffer's first N*K/2 elements are the kept values, row-major. Where cuSPARSELt kept other zero
    positions than our packer (groups with < 2 non-zeros), the returned metadata is adjusted
    (:func:`meta_for_values`); the dense weight described by (buffer head, metadata) is checked to equal the
    input's (+0.0 and -0.0 count as equal). Raises RuntimeError if it does not (no one-copy layer then).
    """
    ext = load_extension()
    n, half = values.shape
    dense = unpack_2to4_reference(values, meta).contiguous()
    compressed = ext.compress(dense)
    head = compressed[: n * half].view(n, half)
    if torch.equal(head.view(torch.int16), values.contiguous().view(torch.int16)):
        return compressed, meta
    new_meta = meta_for_values(head, values, meta)
    # Compared as numbers: a kept -0.0 of a sparse group may land on a pruned (+0.0) column; both are zero.
    if not torch.equal(unpack_2to4_reference(head, new_meta), dense):
        raise RuntimeError(
            "cuSPARSELt's compressed buffer does not start with the row-major kept values of this weight; "
            "the one-copy layout is unsupported with this cuSPARSELt version"
        )
    return compressed, new_meta


def _drop_state(module: torch.nn.Module, *args) -> None:
    setattr(module, STATE_ATTR, None)


def _plain_values_in_state_dict(module, state_dict, prefix, local_metadata) -> None:
    # ``values`` is a view of the bigger compressed buffer: torch.save would write the whole storage.
    name = prefix + "values"
    tensor = state_dict.get(name)
    if tensor is not None and tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        state_dict[name] = tensor.clone()


@torch.compiler.disable
def prepare(module: torch.nn.Module) -> CusparseLtState:
    """Compress ``module``'s weight (once per storage/dtype/device) and make ``values`` a view of the buffer."""
    state = getattr(module, STATE_ATTR, None)
    if state is not None and state.key == _key(module):
        return state
    values, meta = module.values, module.meta
    n, half = values.shape
    with torch.no_grad():
        compressed, new_meta = compress_values(values, meta)
        module.values = compressed[: n * half].view(n, half)
        if new_meta is not meta:
            module.meta = new_meta
    if not getattr(module, "_sparse_llm_hooks", False):
        module._register_state_dict_hook(_plain_values_in_state_dict)
        module._register_load_state_dict_pre_hook(_drop_state, with_module=True)
        module._sparse_llm_hooks = True
    state = CusparseLtState(compressed, n, 2 * half, ())
    state.key = _key(module)
    setattr(module, STATE_ATTR, state)
    return state


@torch.library.custom_op("sparse_llm::cusparselt_linear", mutates_args=())
def _cusparselt_linear_op(
    x: torch.Tensor, compressed: torch.Tensor, bias: torch.Tensor | None, n: int, k: int
) -> torch.Tensor:
    return load_extension().linear(x, compressed, bias, n, k)


@_cusparselt_linear_op.register_fake
def _(x, compressed, bias, n, k):
    return x.new_empty(x.shape[0], n)


def cusparselt_linear(
    x: torch.Tensor, compressed: torch.Tensor, n: int, k: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` with W compressed by :func:`compress_values`; x (..., K) fp16/bf16 on CUDA."""
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features (shape {tuple(x.shape)}), the weight expects {k}")
    x2 = x if x.dim() == 2 else x.reshape(-1, k)  # no reshapes for 2-D x: microseconds per call at decode
    x2 = _dense_rows(x2)
    if torch.compiler.is_compiling():
        out = _cusparselt_linear_op(x2, compressed, bias, n, k)
    else:  # eager: skip the custom-op dispatcher
        out = load_extension().linear(x2, compressed, bias, n, k)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


def _dense_rows(x: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt reads x as a column-major (K, M) matrix: rows must be dense and 16-byte aligned."""
    if not x.is_contiguous():
        return x.contiguous()
    return x.clone() if x.data_ptr() % 16 else x


def bound(state: CusparseLtState, bias: torch.Tensor | None):
    """The product as a function of a 2-D ``x`` alone (eager), the extension's entry and the compressed weight
    resolved once: SparseLinear's plan for calls that take cuSPARSELt."""
    linear, compressed, n, k = load_extension().linear, state.compressed, state.n, state.k
    return lambda x: linear(_dense_rows(x), compressed, bias, n, k)


def ensure_prepared(module: torch.nn.Module) -> CusparseLtState:
    """The module's state, compressing first if it is missing or stale (cheap when it is current)."""
    state = getattr(module, STATE_ATTR, None)
    if state is not None and torch.compiler.is_compiling():
        # compiled code cannot compare data pointers (Dynamo refuses to): it takes the state an eager call made
        # (test_torch_compile_is_one_graph_once_m_was_seen); a load_state_dict or .to() after compiling drops it
        return state
    if state is None or state.key != _key(module):
        state = prepare(module)
    return state


def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Backend entry: ``module`` is a SparseLinear, ``x`` 2-D."""
    state = ensure_prepared(module)
    bias = module.bias
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias dtype {bias.dtype} != input dtype {x.dtype}")
    return cusparselt_linear(x, state.compressed, state.n, state.k, None if bias is None else bias.detach())
