"""One-shot pruning of a causal LM, decoder block by decoder block: ``prune(model, method, sparsity, calibration)``.

For methods that need calibration data, the inputs of block 0 are captured once; then for each block: forward
hooks on its linears accumulate the method's statistics over every calibration window, every selected linear is
pruned, and the block runs again to give the inputs of the next block. So block i is calibrated on the outputs of
the already-pruned blocks < i, and inside a block every linear sees the statistics of that block's (pruned-model)
inputs, as in the Wanda and SparseGPT reference code. Linears that receive the very same input tensor (q/k/v,
gate/up) share one statistics accumulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn

from sparse_llm.calibration import BlockInputs, capture_block_inputs, find_decoder_blocks, forward_block, run_block_
from sparse_llm.methods import LayerStats, PhaseTimer, PruningMethod, SparsityPattern, get_method, parse_sparsity
from sparse_llm.names import as_patterns, matches_any


def select_linears(
    model: nn.Module, include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None
) -> tuple[str, nn.ModuleList, list[list[tuple[str, nn.Linear]]]]:
    """The ``nn.Linear`` layers inside each decoder block, filtered by name (``sparse_llm.names.matches_any``).

    Returns (blocks name, blocks, per block a list of (full name, linear)). ``include`` keeps only names matching
    one of its patterns; ``exclude`` drops names matching any of its. Embeddings and lm_head are outside the blocks
    and never selected. Raises ValueError when nothing is left.
    """
    blocks_name, blocks = find_decoder_blocks(model)
    includes, excludes = as_patterns(include), as_patterns(exclude)
    selected = []
    for index, block in enumerate(blocks):
        layers = []
        for sub_name, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            full = f"{blocks_name}.{index}.{sub_name}" if blocks_name else f"{index}.{sub_name}"
            if includes and not matches_any(full, includes):
                continue
            if matches_any(full, excludes):
                continue
            layers.append((full, module))
        selected.append(layers)
    if not any(selected):
        raise ValueError(f"no nn.Linear inside the decoder blocks matches include={include!r} exclude={exclude!r}")
    return blocks_name, blocks, selected


class _StatsCollector:
    """Forward pre-hooks that feed each selected linear's inputs to its statistics accumulator.

    A linear that receives the same tensor object as an earlier linear of the same block pass shares that one's
    accumulator (decided on the first batch, checked on the others).
    """

    def __init__(self, method: PruningMethod, layers: list[tuple[str, nn.Linear]], timer: PhaseTimer):
        self.stats: dict[str, LayerStats] = {name: method.new_stats(linear) for name, linear in layers}
        self.owner: dict[str, str] = {}
        self.seen: dict[int, tuple[torch.Tensor, str]] = {}
        self.timer = timer
        self.batches = 0
        self.handles = [linear.register_forward_pre_hook(self._hook(name)) for name, linear in layers]

    def new_batch(self) -> None:
        self.seen.clear()
        self.batches += 1

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            entry = self.seen.get(id(x))
            if entry is not None and entry[0] is x:
                if self.batches == 1:
                    self.owner[name] = entry[1]
                elif self.owner.get(name) != entry[1]:
                    raise RuntimeError(f"{name}: inputs shared inconsistently between calibration batches")
                return
            if name in self.owner:
                raise RuntimeError(f"{name}: inputs shared inconsistently between calibration batches")
            self.seen[id(x)] = (x, name)
            with self.timer.phase("statistics"):
                self.stats[name].add(x.detach())

        return hook

    def finish(self) -> dict[str, LayerStats]:
        for handle in self.handles:
            handle.remove()
        self.seen.clear()
        return {name: self.stats[self.owner.get(name, name)] for name in self.stats}


def _layer_report(name: str, linear: nn.Linear, mask: torch.Tensor, pattern: SparsityPattern, seconds: float) -> dict:
    weight = linear.weight.data
    row = {
        "name": name,
        "shape": list(weight.shape),
        "mask_sparsity": 1.0 - mask.float().mean().item(),
        "weight_sparsity": (weight == 0).float().mean().item(),
        "time_s": seconds,
    }
    if pattern.is_nm:
        kept_per_group = mask.reshape(weight.shape[0], -1, pattern.m).sum(-1)
        nonzero_per_group = (weight != 0).reshape(weight.shape[0], -1, pattern.m).sum(-1)
        row["nm_exact"] = bool((kept_per_group == pattern.n).all())
        row["nm_valid"] = bool((nonzero_per_group <= pattern.n).all())
    return row


def prune(
    model: nn.Module,
    method: str | PruningMethod,
    sparsity: float | str | SparsityPattern,
    calibration: torch.Tensor | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    batch_size: int = 1,
    progress: bool = False,
    **method_options,
) -> dict:
    """Prune every selected ``nn.Linear`` inside the model's decoder blocks, in place; return a report dict.

    ``method``: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` (or a :class:`PruningMethod`); ``sparsity``: a float
    in (0, 1) for unstructured sparsity or ``"2:4"`` / ``"4:8"`` (keep N of every M along the input dimension);
    ``calibration``: (windows, seqlen) token ids, needed by Wanda and SparseGPT; ``include`` / ``exclude``: regexes
    searched in the linears' full names; ``batch_size``: windows per forward pass (must divide the window count);
    ``method_options`` go to the method (SparseGPT: ``blocksize``, ``percdamp``).
    The report holds per-layer mask and weight sparsity (N:M checked group by group), timings per phase and the
    calibration shape.
    """
    pruner = get_method(method, **method_options)
    pattern = parse_sparsity(sparsity)
    blocks_name, blocks, selected = select_linears(model, include, exclude)
    for layers in selected:
        for name, linear in layers:
            pattern.check_layer(name, linear.weight)
    if pruner.needs_calibration and calibration is None:
        raise ValueError(f"{pruner.name} needs calibration token windows (windows, seqlen); got calibration=None")
    first_param = next(model.parameters())
    timer = PhaseTimer(first_param.device)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    layer_rows: list[dict] = []
    try:
        inputs: BlockInputs | None = None
        if pruner.needs_calibration:
            with timer.phase("capture"):
                inputs = capture_block_inputs(model, blocks, calibration, batch_size)
        iterator = enumerate(zip(blocks, selected, strict=True))
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(blocks), desc=f"{pruner.name} {pattern}", unit="block")
        for index, (block, layers) in iterator:
            stats: dict[str, LayerStats | None] = {name: None for name, _ in layers}
            if inputs is not None and layers:
                collector = _StatsCollector(pruner, layers, timer)
                try:
                    with timer.phase("forward"):
                        forward_block(block, inputs, before_batch=collector.new_batch)
                finally:
                    stats = collector.finish()
            for name, linear in layers:
                layer_start = time.perf_counter()
                mask = pruner.prune_linear(linear, pattern, stats[name], timer, name=name)
                row = _layer_report(name, linear, mask, pattern, time.perf_counter() - layer_start)
                row.update(getattr(pruner, "last_info", {}))
                layer_rows.append(row)
                stats[name] = None
            del stats
            if inputs is not None and index + 1 < len(blocks):
                with timer.phase("forward"):
                    run_block_(block, inputs, index)
            timer.totals()  # resolves this block's CUDA events so they do not pile up
    finally:
        model.train(was_training)
    total = time.perf_counter() - start
    totals = timer.totals()
    # Statistics are accumulated inside the forward passes: report the forward time without them.
    timings = {
        "capture_s": totals.get("capture", 0.0),
        "forward_s": totals.get("forward", 0.0) - totals.get("statistics", 0.0),
        "statistics_s": totals.get("statistics", 0.0),
        "mask_s": totals.get("mask", 0.0),
        "update_s": totals.get("update", 0.0),
        "total_s": total,
    }
    pruned = sum(row["mask_sparsity"] * row["shape"][0] * row["shape"][1] for row in layer_rows)
    numel = sum(row["shape"][0] * row["shape"][1] for row in layer_rows)
    report = {
        "method": pruner.name,
        "sparsity": str(pattern),
        "target_sparsity": pattern.sparsity,
        "blocks": blocks_name,
        "num_blocks": len(blocks),
        "num_layers": len(layer_rows),
        "overall_mask_sparsity": pruned / numel,
        "calibration": None
        if inputs is None
        else {"windows": int(calibration.shape[0]), "seqlen": int(calibration.shape[1]), "batch_size": batch_size},
        "device": str(first_param.device),
        "dtype": str(first_param.dtype).removeprefix("torch."),
        "timings": timings,
        "layers": layer_rows,
    }
    if pattern.is_nm:
        report["nm_exact"] = all(row["nm_exact"] for row in layer_rows)
        report["nm_valid"] = all(row["nm_valid"] for row in layer_rows)
    return report


def measure_sparsity(
    model: nn.Module, include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None
) -> dict:
    """Fraction of zero weights in the decoder blocks' linears, and whether every one of them is 2:4."""
    from sparse_llm.masks import is_nm_sparse

    _, _, selected = select_linears(model, include, exclude)
    zeros = total = 0
    all_2to4 = True
    for layers in selected:
        for _, linear in layers:
            weight = linear.weight.data
            zeros += int((weight == 0).sum())
            total += weight.numel()
            all_2to4 = all_2to4 and is_nm_sparse(weight, 2, 4)
    return {"layers": sum(len(layers) for layers in selected), "overall": zeros / total, "all_2to4": all_2to4}
