"""A whole Llama-shaped model, dense against SparseLinear, side by side: what the per-layer speedups give when every
linear of the decoder blocks is swapped (``sparse_llm.sparsify``), attention, norms and the rest included.

The model is built from a config (no hub; random bf16 weights, std 0.02, norms at 1), every linear of the decoder
blocks is pruned to a random 2:4 mask in place, and a copy of it gets SparseLinear layers (``sparse_llm.sparsify``).
The decoder body (``model.model``, without ``lm_head``) of both is timed on token batches of shape (B, S):

- (B, 1) for B in 1, 8, 32: a decode step's linears (one new token per sequence) without a KV cache, so attention
  sees no history: the step's time without the attention over the cache;
- (1, 512) and (1, 2048): prefill.

Dense and ours are timed in alternation, ``--rounds`` times each (the host of the GPU machine drifts between runs):
CUDA events around an eager forward, around a CUDA-graph replay of it (no cache clear: the blocks' weights are far
larger than the L2), and the host time to enqueue an eager forward. One profiled eager forward of each splits the
GPU kernel time into the blocks' linears and the rest (attention, norms, rotary, activations). Both bf16 outputs
are compared with an fp32 copy of the dense model (relative error of the last hidden state).

    python bench/model_forward.py --out DIR [--model llama-3-8b|llama-2-7b] [--blocks 32] [--host-profile]
                                  [--tables [PATH ...]]

``--tables``: the backend choices of these tuning tables (given bare: the committed H100 and H200 ones) instead of
the user's cache; without a tuned entry for the GPU at hand every layer runs its untuned defaults. The tuned entries
of the model's linear shapes are written with the result.

Writes ``model_forward_<model>.json``.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import statistics
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_tables_argument, apply_tables, host_profile, rel_err, write_result  # noqa: E402

from sparse_llm import SparseLinear, sparsify, tune  # noqa: E402
from sparse_llm.benchmark import capture_graph, enqueue_us, events_us  # noqa: E402

MODELS = {  # hidden, MLP, heads, KV heads, vocab
    "llama-2-7b": (4096, 11008, 32, 32, 32000),
    "llama-3-8b": (4096, 14336, 32, 8, 128256),
}
SHAPES = ((1, 1), (8, 1), (32, 1), (1, 512), (1, 2048))


def build(model: str, blocks: int, device: str, seed: int = 0) -> LlamaForCausalLM:
    """The model with random weights, every linear of its blocks pruned to a random 2:4 mask, bf16, eval mode."""
    hidden, mlp, heads, kv_heads, vocab = MODELS[model]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=4096, rms_norm_eps=1e-5)  # fmt: skip
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            net = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
                continue
            parameter.normal_(0.0, 0.02, generator=generator)
            if name.startswith("model.layers.") and parameter.dim() == 2:
                n, k = parameter.shape
                keep = torch.rand(n, k // 4, 4, device=device, generator=generator).argsort(-1) < 2
                parameter.mul_(keep.reshape(n, k))
    return net.eval()


def _linear_ranges(net: torch.nn.Module) -> list:
    """Forward hooks that put every linear of the decoder blocks (dense or SparseLinear) in a profiler range named
    ``linear``, so its kernels' GPU time can be told from the rest's (hooks, not patched code)."""
    handles = []
    for name, module in net.named_modules():
        if name.startswith("model.layers.") and isinstance(module, (torch.nn.Linear, SparseLinear)):

            def pre(mod, args):
                mod._range = torch.profiler.record_function("linear")
                mod._range.__enter__()

            def post(mod, args, out):
                mod._range.__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def kernel_split(net: torch.nn.Module, fn) -> dict:
    """GPU kernel time of one eager forward, in the decoder blocks' linears and in everything else (ms), and the
    kernels that took the most time."""
    handles = _linear_ranges(net)
    try:
        fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                torch.profiler.ProfilerActivity.CPU]) as prof:  # fmt: skip
            fn()
            torch.cuda.synchronize()
    finally:
        for handle in handles:
            handle.remove()
    # GPU-side events: the kernels, and the GPU spans of the ``linear`` ranges (user annotations named ``linear``).
    # A kernel inside a span is a linear's; the spans themselves also hold the gaps between a linear's kernels (cuBLAS
    # split-K: a GEMM and a reduction, launched apart by the host), so they are not summed.
    gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in gpu if e.name == "linear")
    starts = [a for a, _ in spans]
    kernels = [e for e in gpu if e.name != "linear"]

    def in_linear(e) -> bool:
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        return i >= 0 and e.time_range.end <= spans[i][1]

    total = sum(e.device_time for e in kernels) / 1e3
    linear = sum(e.device_time for e in kernels if in_linear(e)) / 1e3
    by_name: dict[str, float] = {}
    for e in kernels:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / 1e3
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    return {"kernels_ms": total, "linear_ms": linear, "other_ms": total - linear,
            "top_kernels_ms": [[name[:120], ms] for name, ms in top]}  # fmt: skip


def forward_fn(net: torch.nn.Module, ids: torch.Tensor):
    def fn():
        return net.model(input_ids=ids, use_cache=False).last_hidden_state

    return fn


def compare(dense_net, sparse_net, ids: torch.Tensor, rounds: int) -> dict:
    """Dense and ours on the same input, timed in alternation (``rounds`` times each, eager then graph replay): the
    host of the GPU machine drifts by tens of percent between runs, so each round's ratio is taken side by side."""
    fns = {"dense": forward_fn(dense_net, ids), "ours": forward_fn(sparse_net, ids)}
    row: dict = {}
    with torch.no_grad():
        graphs = {}
        for side, fn in fns.items():
            row[f"{side}_out"] = fn()
            try:
                graphs[side], _ = capture_graph(fn)
            except Exception as err:  # capture refused: say why
                row[f"{side}_graph_note"] = f"{type(err).__name__}: {err}"[:300]
        times: dict[str, list[float]] = {f"{side}_{kind}": [] for side in fns for kind in ("eager", "graph", "host")}
        for _ in range(rounds):
            for side, fn in fns.items():
                times[f"{side}_eager"].append(events_us(fn, reps=10))
                times[f"{side}_host"].append(enqueue_us(fn, calls=5))
                if side in graphs:
                    times[f"{side}_graph"].append(events_us(graphs[side].replay, reps=10))
        for key, values in times.items():
            row[f"{key}_us"] = statistics.median(values) if values else None
        for kind in ("eager", "graph", "host"):
            pairs = list(zip(times[f"dense_{kind}"], times[f"ours_{kind}"], strict=False))
            row[f"{kind}_speedup"] = statistics.median(d / o for d, o in pairs) if pairs else None
        row["dense_split"] = kernel_split(dense_net, fns["dense"])
        row["ours_split"] = kernel_split(sparse_net, fns["ours"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="llama-3-8b", choices=sorted(MODELS))
    ap.add_argument("--blocks", type=int, default=32, help="decoder blocks (the real model's count by default)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating dense/ours timing rounds per shape")
    ap.add_argument("--host-profile", action="store_true", help="cProfile the eager forwards at (8, 1)")
    add_tables_argument(ap)
    args = ap.parse_args()
    tables = apply_tables(args.tables)
    if not torch.cuda.is_available():
        raise SystemExit("model_forward.py times a GPU: no CUDA device here")
    dense_net = build(args.model, args.blocks, "cuda")
    vocab = dense_net.config.vocab_size
    inputs = {shape: torch.randint(0, vocab, shape, device="cuda") for shape in SHAPES}
    reference = fp32_reference(dense_net, inputs)
    sparse_net = copy.deepcopy(dense_net)
    swapped = sparsify(sparse_net, include=r"^model\.layers\.")
    rows, profiles = [], {}
    for shape, ids in inputs.items():
        r = compare(dense_net, sparse_net, ids, args.rounds)
        d_out, o_out = r.pop("dense_out"), r.pop("ours_out")
        row = {"batch": shape[0], "seq": shape[1], "tokens": shape[0] * shape[1], **r,
               "rel_err": rel_err(o_out, d_out), "dense_err_vs_fp32": rel_err(d_out, reference[shape]),
               "ours_err_vs_fp32": rel_err(o_out, reference[shape])}  # fmt: skip
        rows.append(row)
        ds, os_ = row["dense_split"], row["ours_split"]
        graph = f"{row['graph_speedup']:.2f}x" if row["graph_speedup"] else "-"
        print(f"{args.model} x{args.blocks}, tokens {shape}: graph {graph} (dense {row['dense_graph_us']:.0f} us), "
              f"eager {row['eager_speedup']:.2f}x, host per forward dense {row['dense_host_us']:.0f} / ours "
              f"{row['ours_host_us']:.0f} us; kernels dense {ds['kernels_ms']:.2f} ms (linear {ds['linear_ms']:.2f}), "
              f"ours {os_['kernels_ms']:.2f} ms (linear {os_['linear_ms']:.2f}); err vs fp32 dense "
              f"{row['dense_err_vs_fp32']:.1e} ours {row['ours_err_vs_fp32']:.1e}", flush=True)  # fmt: skip
        if args.host_profile and shape == (8, 1):
            with torch.no_grad():
                profiles = {side: host_profile(forward_fn(net, ids), calls=3)
                            for side, net in (("dense", dense_net), ("ours", sparse_net))}  # fmt: skip
    # the entries the dispatcher reads for the model's layers (the user's or the shipped ones, this GPU, this dtype)
    weights = {(mod.out_features, mod.in_features): mod.values for mod in sparse_net.modules()
               if isinstance(mod, SparseLinear)}  # fmt: skip
    tuned = [e for (n, k), v in sorted(weights.items()) if (e := tune.lookup(n, k, v.dtype, v.device))]
    payload = {"model": args.model, "blocks": args.blocks, "swapped_linears": len(swapped), "rows": rows,
               "tables": tables, "tuned_entries": tuned}  # fmt: skip
    if profiles:
        payload["host_profile_8x1"] = profiles
    write_result(args.out, f"model_forward_{args.model}", payload)


def fp32_reference(net: torch.nn.Module, inputs: dict) -> dict:
    """The last hidden state of an fp32 copy of the dense model on each input: what both bf16 models' errors are
    measured against (the masked weights are exact in fp32; the copy is freed afterwards)."""
    ref_net = copy.deepcopy(net).float()
    with torch.no_grad():
        out = {shape: forward_fn(ref_net, ids)().float() for shape, ids in inputs.items()}
    del ref_net
    torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main()
