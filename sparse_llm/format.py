"""The canonical 2:4 semi-structured format: kept values + natural-order 2-bit metadata.

Layout (DESIGN.md), for a weight ``W`` of shape (N, K) with at most 2 non-zeros in every group of 4 along K:

- ``values``: (N, K/2), W's dtype: the two kept values of each group of 4, in column order.
- ``meta``: (N, K/16) int16: per group of 4, two 2-bit column indices (the lower kept index in bits 0-1, the
  higher in bits 2-3), 4 groups per int16, the lowest columns in the lowest bits. Groups ``[a,b,0,0]`` and
  ``[0,0,c,d]`` give the low byte ``0xE4``.

Groups with fewer than 2 non-zeros keep their non-zero positions and fill up with the lowest zero positions
(an all-zero group is encoded as indices (0, 1)): the Triton packer follows the same rule bit-exactly.

Validation is strict: a group with more than 2 non-zeros is a ``ValueError`` naming its row and columns, never
a silent drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Columns covered by one int16 of metadata: 4 groups of 4.
META_COLUMNS = 16


def check_dense_2to4_input(w: torch.Tensor) -> None:
    """Raise a clear error unless ``w`` is a 2-D float tensor whose K is a multiple of 16."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"a 2:4 weight must be 2-D (N, K), got shape {tuple(w.shape)}")
    if w.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported dtype {w.dtype} for 2:4 packing; supported: float32, float16, bfloat16")
    if w.shape[1] % META_COLUMNS != 0:
        raise ValueError(f"K = {w.shape[1]} (shape {tuple(w.shape)}) must be a multiple of {META_COLUMNS} for 2:4")


def _raise_first_violation(nonzero_count: torch.Tensor) -> None:
    """Raise for the first group (row-major) of the (N, K/4) count tensor with more than 2 non-zeros."""
    bad = (nonzero_count > 2).flatten().nonzero()
    if bad.numel():
        flat = int(bad[0, 0])
        groups = nonzero_count.shape[1]
        row, col = flat // groups, 4 * (flat % groups)
        raise ValueError(
            f"weight is not 2:4: row {row}, columns {col}..{col + 3} hold {int(nonzero_count.flatten()[flat])} "
            "non-zeros (at most 2 per group of 4 along K are allowed)"
        )


def pack_2to4_reference(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch packer: (N, K) 2:4 weight -> (values (N, K/2), meta (N, K/16) int16). Strictly validated."""
    check_dense_2to4_input(w)
    n, k = w.shape
    groups = w.reshape(n, k // 4, 4)
    nonzero = groups != 0
    _raise_first_violation(nonzero.sum(-1))
    # Fill groups with < 2 non-zeros with their lowest zero positions so exactly two are selected.
    zero = ~nonzero
    fillers_needed = (2 - nonzero.sum(-1, keepdim=True)).clamp(min=0)
    selected = nonzero | (zero & (zero.cumsum(-1) <= fillers_needed))
    position = torch.arange(4, device=w.device)
    # First selected = smallest selected position; second = largest (exactly two are selected).
    low = torch.where(selected, position, 4).amin(-1)
    high = torch.where(selected, position, -1).amax(-1)
    values = torch.stack([groups.gather(-1, low.unsqueeze(-1)), groups.gather(-1, high.unsqueeze(-1))], -1)
    values = values.reshape(n, k // 2)
    nibbles = (low | (high << 2)).to(torch.int32).reshape(n, k // META_COLUMNS, 4)
    word = (nibbles << torch.tensor([0, 4, 8, 12], device=w.device, dtype=torch.int32)).sum(-1)
    meta = torch.where(word >= 1 << 15, word - (1 << 16), word).to(torch.int16)
    return values.contiguous(), meta.contiguous()


def meta_indices(meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (N, K/16) int16 metadata into the (N, K/4) low and high kept column indices (0..3) per group."""
    word = meta.to(torch.int32) & 0xFFFF
    shifts = torch.tensor([0, 4, 8, 12], device=meta.device, dtype=torch.int32)
    nibbles = ((word.unsqueeze(-1) >> shifts) & 0xF).reshape(meta.shape[0], -1)
    return nibbles & 3, nibbles >> 2


def unpack_2to4_reference(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Plain-torch unpacker: (values (N, K/2), meta (N, K/16)) -> dense (N, K) weight."""
    n, half = values.shape
    low, high = meta_indices(meta)
    dense = torch.zeros(n, half // 2, 4, dtype=values.dtype, device=values.device)
    kept = values.reshape(n, half // 2, 2)
    dense.scatter_(-1, low.unsqueeze(-1).long(), kept[..., :1])
    dense.scatter_(-1, high.unsqueeze(-1).long(), kept[..., 1:])
    return dense.reshape(n, 2 * half)


def check_packed(values: torch.Tensor, meta: torch.Tensor) -> None:
    """Validate a packed pair: shapes, dtypes, devices, and metadata whose two indices per group are increasing."""
    if values.dim() != 2 or meta.dim() != 2:
        raise ValueError(f"values and meta must be 2-D, got {tuple(values.shape)} and {tuple(meta.shape)}")
    if values.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported values dtype {values.dtype}; supported: float32, float16, bfloat16")
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16, got {meta.dtype}")
    if values.device != meta.device:
        raise ValueError(f"values on {values.device} but meta on {meta.device}")
    n, half = values.shape
    if meta.shape != (n, half // 8) or half % 8:
        raise ValueError(
            f"values {tuple(values.shape)} and meta {tuple(meta.shape)} do not describe one (N, K) 2:4 weight: "
            "expected values (N, K/2) and meta (N, K/16) with K a multiple of 16"
        )
    low, high = meta_indices(meta)
    bad = (low >= high).flatten().nonzero()
    if bad.numel():
        flat = int(bad[0, 0])
        groups = low.shape[1]
        raise ValueError(
            f"corrupt 2:4 metadata at row {flat // groups}, group {flat % groups}: "
            "the two kept column indices must be distinct and increasing"
        )


@dataclass(frozen=True)
class Sparse24Weight:
    """A 2:4 weight in the canonical packed form (see module docstring).

    Build it with :meth:`from_dense` (strictly validated) and get the dense weight back with :meth:`to_dense`
    (bit-exact round trip). CUDA tensors are packed by a Triton kernel, other devices by the torch reference.
    """

    values: torch.Tensor  # [N, K/2], float32 / float16 / bfloat16
    meta: torch.Tensor  # [N, K/16] int16

    def __post_init__(self) -> None:
        check_packed(self.values, self.meta)

    @classmethod
    def from_dense(cls, w: torch.Tensor) -> Sparse24Weight:
        """Pack a dense (N, K) weight that is already 2:4 (at most 2 non-zeros per group of 4 along K)."""
        check_dense_2to4_input(w)
        if w.is_cuda:
            from sparse_llm.ops.pack import pack_2to4_triton

            values, meta = pack_2to4_triton(w)
        else:
            values, meta = pack_2to4_reference(w)
        return cls._trusted(values, meta)

    @classmethod
    def _trusted(cls, values: torch.Tensor, meta: torch.Tensor) -> Sparse24Weight:
        """Wrap the output of our own packers without re-validating it (decoding the metadata costs more than
        packing did)."""
        packed = object.__new__(cls)
        object.__setattr__(packed, "values", values)
        object.__setattr__(packed, "meta", meta)
        return packed

    def to_dense(self) -> torch.Tensor:
        """The dense (N, K) weight, zeros where pruned."""
        return unpack_2to4_reference(self.values, self.meta)

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K) of the dense weight."""
        return (self.values.shape[0], self.values.shape[1] * 2)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, *args, **kwargs) -> Sparse24Weight:
        """Move/cast like ``Tensor.to``; the dtype applies to the values only (metadata stays int16)."""
        values = self.values.to(*args, **kwargs)
        return Sparse24Weight(values, self.meta.to(values.device))
