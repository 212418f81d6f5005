"""Block-by-block calibration: find the decoder blocks, capture the inputs of the first one, replay block by block.

The decoder blocks are found generically: the largest ``nn.ModuleList`` whose children are all of one class and
hold ``nn.Linear`` layers (``model.model.layers`` in transformers' Llama / Qwen2 / Mistral, but nothing assumes
that path). The inputs of block 0 are captured with a forward pre-hook that stops the forward pass there, together
with whatever keyword arguments the model passes to its blocks (rotary position embeddings, attention mask,
position ids, ...): calibration windows are equal-length and unpadded, so those are the same for every window and
are kept once. Only one block's activations live at a time: each block's outputs overwrite its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


class _StopForward(Exception):
    """Raised by the capture hook to end the model's forward pass at the first decoder block."""


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (qualified name, module list) of the model's repeated decoder blocks.

    Raises ValueError when the model holds no ``nn.ModuleList`` of same-class children containing linears.
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(isinstance(sub, nn.Linear) for sub in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        # The outermost list wins (a list of experts inside each block is smaller than the list of blocks).
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(
            f"no decoder blocks found in {type(model).__name__}: expected an nn.ModuleList of identical blocks "
            "containing nn.Linear layers (such as model.model.layers in transformers' causal LMs)"
        )
    return best[1], best[2]


def model_context_length(model: nn.Module) -> int | None:
    """The longest sequence the model accepts (``config.max_position_embeddings`` or similar), if it says."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_token_windows(input_ids: torch.Tensor, model: nn.Module, what: str = "calibration") -> None:
    """Raise a clear error unless ``input_ids`` is a 2-D integer (windows, seqlen) tensor the model can take."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of token ids (windows, seqlen), got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer token ids (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
        raise ValueError(
            f"{what} must have shape (windows, seqlen) with at least one window of 2+ tokens, "
            f"got shape {tuple(input_ids.shape)}"
        )
    context = model_context_length(model)
    if context is not None and input_ids.shape[1] > context:
        raise ValueError(f"{what} windows of {input_ids.shape[1]} tokens are longer than the model's context {context}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if input_ids.min() < 0 or (isinstance(vocab, int) and input_ids.max() >= vocab):
        raise ValueError(
            f"{what} holds token ids outside [0, {vocab}): range {int(input_ids.min())}..{int(input_ids.max())}"
        )


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def check_finite_activations(x: torch.Tensor, where: str) -> None:
    """Raise ValueError when ``x`` holds NaN or Inf."""
    if not torch.isfinite(x).all():
        raise ValueError(
            f"NaN or Inf activations at {where}: the model overflows on the calibration data "
            "(try float32 or bfloat16 instead of float16, or check the weights)"
        )


@dataclass
class BlockInputs:
    """The hidden states entering the current block, (windows, seqlen, hidden), and the block's other arguments."""

    hidden: torch.Tensor
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    hidden_in_kwargs: bool = False
    batch_size: int = 1

    def batches(self) -> Iterator[slice]:
        for start in range(0, self.hidden.shape[0], self.batch_size):
            yield slice(start, start + self.batch_size)

    def call(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on hidden states ``x`` with the captured arguments; return its hidden-state output."""
        if self.hidden_in_kwargs:
            out = block(*self.args, **{**self.kwargs, "hidden_states": x})
        else:
            out = block(x, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int = 1
) -> BlockInputs:
    """Run the model on ``input_ids`` (windows, seqlen) up to its first decoder block; keep that block's inputs."""
    check_token_windows(input_ids, model)
    windows = input_ids.shape[0]
    if batch_size <= 0 or windows % batch_size:
        raise ValueError(f"batch_size {batch_size} must be positive and divide the number of windows {windows}")
    device = _model_device(model)
    captured: dict = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            x, rest, in_kwargs = args[0], tuple(args[1:]), False
        elif "hidden_states" in kwargs:
            x, rest, in_kwargs = kwargs["hidden_states"], (), True
        else:
            raise ValueError(f"cannot find the hidden states among the arguments of {type(module).__name__}")
        if "hidden" not in captured:
            captured["hidden"] = torch.empty((windows, *x.shape[1:]), dtype=x.dtype, device=x.device)
            captured["args"] = rest
            captured["kwargs"] = {key: value for key, value in kwargs.items() if key != "hidden_states"}
            captured["in_kwargs"] = in_kwargs
        start = captured.setdefault("next", 0)
        captured["hidden"][start : start + x.shape[0]] = x
        captured["next"] = start + x.shape[0]
        raise _StopForward

    forward_kwargs = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, windows, batch_size):
                try:
                    model(input_ids[start : start + batch_size].to(device), **forward_kwargs)
                except _StopForward:
                    continue
                raise RuntimeError(
                    "the model's forward pass never reached its first decoder block; "
                    f"the blocks found ({type(blocks[0]).__name__}) are not on the main path"
                )
    finally:
        handle.remove()
    check_finite_activations(captured["hidden"], "the input of decoder block 0")
    return BlockInputs(
        captured["hidden"], captured["args"], captured["kwargs"], captured["in_kwargs"], batch_size=batch_size
    )


def run_block_(
    block: nn.Module, inputs: BlockInputs, index: int, before_batch: Callable[[], None] | None = None
) -> None:
    """Replace ``inputs.hidden`` by ``block``'s outputs, window batch by window batch (one buffer, in place)."""
    with torch.no_grad():
        for rows in inputs.batches():
            if before_batch is not None:
                before_batch()
            inputs.hidden[rows] = inputs.call(block, inputs.hidden[rows])
    check_finite_activations(inputs.hidden, f"the output of decoder block {index}")


def forward_block(block: nn.Module, inputs: BlockInputs, before_batch: Callable[[], None] | None = None) -> None:
    """Run ``block`` over all captured windows and discard the outputs (statistics are collected by hooks)."""
    with torch.no_grad():
        for rows in inputs.batches():
            if before_batch is not None:
                before_batch()
            inputs.call(block, inputs.hidden[rows])
