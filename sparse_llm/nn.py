"""SparseLinear: an ``nn.Linear`` replacement whose weight is a packed 2:4 :class:`Sparse24Weight`."""

from __future__ import annotations

import torch
from torch import nn

from sparse_llm import backends
from sparse_llm.format import Sparse24Weight


def _forget_plans(module: nn.Module, *args) -> None:
    """load_state_dict pre-hook (a module-level function: the layer stays picklable and deep-copyable)."""
    backends.forget_plans(module)


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` stored as 2:4 ``values`` (N, K/2) and int16 ``meta`` (N, K/16) buffers.

    Buffers (not parameters) so ``state_dict``, ``.to()``, ``.half()`` behave as for ``nn.Linear`` while the
    metadata keeps its integer type. ``forward`` accepts any leading dims and dispatches per call to a backend
    (``sparse_llm.backends``); on a CPU it is the reference path, equal to ``F.linear`` on the dense weight.
    ``backend`` (a name) forces one backend for this layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ):
        """An empty layer (uninitialised buffers, like ``nn.Linear``'s signature): fill it with ``load_state_dict``
        or build it with :meth:`from_weight` / :meth:`from_linear`."""
        super().__init__()
        if in_features % 16:
            raise ValueError(f"in_features = {in_features} must be a multiple of 16 for 2:4")
        dtype = dtype or torch.get_default_dtype()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("values", torch.empty(out_features, in_features // 2, device=device, dtype=dtype))
        self.register_buffer("meta", torch.zeros(out_features, in_features // 16, device=device, dtype=torch.int16))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), False) if bias else None
        self.backend = backend
        self._register_load_state_dict_pre_hook(_forget_plans, with_module=True)

    @classmethod
    def from_weight(cls, weight: Sparse24Weight, bias: torch.Tensor | None = None) -> SparseLinear:
        """A layer holding ``weight`` (shared, not copied) and a copy of ``bias``."""
        out_features, in_features = weight.shape
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias shape {tuple(bias.shape)} does not match out_features {out_features}")
        layer = cls(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
        layer.values, layer.meta = weight.values, weight.meta
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(weight.dtype).clone(), requires_grad=False)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, name: str = "") -> SparseLinear:
        """Pack ``linear``'s weight (after ``mask``, True = keep, if given); it must then be 2:4."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name or 'module'}: expected nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if mask is not None:
            if mask.shape != weight.shape:
                raise ValueError(f"{name or 'linear'}: mask shape {tuple(mask.shape)} != weight {tuple(weight.shape)}")
            weight = weight * mask.to(device=weight.device, dtype=torch.bool)
        try:
            packed = Sparse24Weight.from_dense(weight)
        except (ValueError, TypeError) as err:
            label = f"layer {name!r}: " if name else ""
            raise type(err)(f"{label}{err}") from None
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls.from_weight(packed, bias)

    @property
    def weight_format(self) -> Sparse24Weight:
        """The packed weight as a :class:`Sparse24Weight` (sharing storage with the buffers)."""
        return Sparse24Weight(self.values, self.meta)

    def dense_weight(self) -> torch.Tensor:
        """The dense (N, K) weight, zeros where pruned."""
        return self.weight_format.to_dense()

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with the same (masked) weight and bias, on the same device and dtype."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None,
            device=self.values.device, dtype=self.values.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def __getstate__(self) -> dict:
        # the dispatcher's plans are closures (not picklable) over this layer's tensors: a copy binds its own
        state = self.__dict__.copy()
        state.pop(backends.PLANS_ATTR, None)
        return state

    def _apply(self, fn, recurse=True):
        # .to() / .half() / .cpu() make new tensors: the plans and the compressed copy must not outlive the old ones
        backends.forget_plans(self, prepared=True)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plan of an earlier call like this one (same shape, dtype and device, so the checks below passed for it,
        # and the same tensors in the layer) runs directly: the eager host time of a call at decode.
        out = backends.run_plan(self, x)
        if out is not None:
            return out
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dim {x.shape[-1]} != in_features {self.in_features}")
        values = self.values  # one attribute lookup (nn.Module's buffer lookup is host time on every call)
        if x.dtype != values.dtype:
            raise TypeError(f"input dtype {x.dtype} != SparseLinear weight dtype {values.dtype}")
        if x.device != values.device:
            raise RuntimeError(f"input on {x.device} but SparseLinear weight on {values.device}")
        return backends.linear(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4"
