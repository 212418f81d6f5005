"""A whole Llama-shaped model, dense against SparseLinear, side by side: what the per-layer speedups give when every
linear of the decoder blocks is swapped (``sparse_llm.sparsify``), attention, norms and the rest included.

The model is built from a config (no hub; random bf16 weights, std 0.02, norms at 1), every linear of the decoder
blocks is pruned to a random 2:4 mask in place, and the decoder body (``model.model``, without ``lm_head``) is
timed on token batches of shape (B, S), first dense, then after ``sparsify`` on the same weights:

- (B, 1) for B in 1, 8, 32: a decode step's linears (one new token per sequence) without a KV cache, so attention
  sees no history: the step's time without the attention over the cache;
- (1, 512) and (1, 2048): prefill.

Each time is the median of CUDA events over 20 runs (``benchmark.events_us``), eager and as a CUDA-graph replay
(no cache clear: the blocks' weights are far larger than the L2). The outputs of the two models are compared
(relative error of the last hidden state).

    python bench/model_forward.py --out DIR [--model llama-3-8b|llama-2-7b] [--blocks 32]

Writes ``model_forward_<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import rel_err, write_result  # noqa: E402

from sparse_llm import sparsify  # noqa: E402
from sparse_llm.benchmark import capture_graph, events_us  # noqa: E402

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


def measure(body, ids: torch.Tensor) -> dict:
    """Eager and graph-replay times of the decoder body on ``ids``, and its output (eager)."""
    def fn():
        return body(input_ids=ids, use_cache=False).last_hidden_state

    with torch.no_grad():
        row = {"eager_us": events_us(fn), "out": fn()}
        try:
            graph, _ = capture_graph(fn)
            row["graph_us"] = events_us(graph.replay)
        except Exception as err:  # capture refused: say why
            row["graph_us"] = None
            row["graph_note"] = f"{type(err).__name__}: {err}"[:300]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="llama-3-8b", choices=sorted(MODELS))
    ap.add_argument("--blocks", type=int, default=32, help="decoder blocks (the real model's count by default)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("model_forward.py times a GPU: no CUDA device here")
    net = build(args.model, args.blocks, "cuda")
    vocab = net.config.vocab_size
    inputs = {shape: torch.randint(0, vocab, shape, device="cuda") for shape in SHAPES}
    dense = {shape: measure(net.model, ids) for shape, ids in inputs.items()}
    swapped = sparsify(net, include=r"^model\.layers\.")
    sparse = {shape: measure(net.model, ids) for shape, ids in inputs.items()}
    rows = []
    for shape in SHAPES:
        d, s = dense[shape], sparse[shape]
        row = {"batch": shape[0], "seq": shape[1], "tokens": shape[0] * shape[1],
               "dense_us": d["eager_us"], "ours_us": s["eager_us"], "speedup": d["eager_us"] / s["eager_us"],
               "dense_graph_us": d["graph_us"], "ours_graph_us": s["graph_us"],
               "rel_err": rel_err(s["out"], d["out"])}  # fmt: skip
        row["graph_speedup"] = d["graph_us"] / s["graph_us"] if d["graph_us"] and s["graph_us"] else None
        for side, r in (("dense", d), ("ours", s)):
            if "graph_note" in r:
                row[f"{side}_graph_note"] = r["graph_note"]
        rows.append(row)
        graph = f"{row['graph_speedup']:.2f}x" if row["graph_speedup"] else "-"
        print(f"{args.model} x{args.blocks} blocks, tokens {shape}: dense {row['dense_us']:.0f} us, ours "
              f"{row['ours_us']:.0f} us ({row['speedup']:.2f}x; graph {graph}), rel err {row['rel_err']:.1e}",
              flush=True)  # fmt: skip
    payload = {"model": args.model, "blocks": args.blocks, "swapped_linears": len(swapped), "rows": rows}
    write_result(args.out, f"model_forward_{args.model}", payload)


if __name__ == "__main__":
    main()
