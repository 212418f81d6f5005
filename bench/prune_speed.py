"""How long one-shot pruning of a Llama-2-7B-shaped model takes on one GPU, and where the time goes.

The model is built from a config (no hub): Llama-2-7B's shapes (32 blocks, hidden 4096, MLP 11008, 32 heads,
vocab 32000), random bf16 weights (normal, std 0.02; norms at 1), on the GPU. Calibration: 128 windows of 2048
random token ids (the speed does not depend on the text). Wanda and SparseGPT at 2:4, each on a freshly built
model; the wall time is split into the block forward passes of calibration (two per block: statistics, then the
outputs of the pruned block for the next one), statistics (Σx² for Wanda, XᵀX in fp32 for SparseGPT), mask work
and SparseGPT's update (Cholesky of H⁻¹ and the OBS sweep, with its per-group N:M mask choices inside).

    python bench/prune_speed.py --out bench/results [--blocks 32] [--nsamples 128] [--seqlen 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparse_llm.benchmark import environment
from sparse_llm.prune import measure_sparsity, prune

RESULT_NAME = "prune_speed_llama2_7b.json"


def llama2_7b_config(blocks: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=blocks,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )


def build_model(blocks: int, seed: int) -> LlamaForCausalLM:
    """Llama-2-7B-shaped model, bf16 on the GPU, weights drawn directly there."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(llama2_7b_config(blocks))
    finally:
        torch.set_default_dtype(default)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--blocks", type=int, default=32, help="decoder blocks (Llama-2-7B: 32)")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--sparsity", default="2:4")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("prune_speed.py needs a CUDA GPU")

    path = Path(args.out) / RESULT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    calibration = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    result = {
        "environment": environment(),
        "model": f"Llama-2-7B shapes, {args.blocks} blocks, random bf16 weights (std 0.02), built from a config",
        "calibration": {"windows": args.nsamples, "seqlen": args.seqlen, "tokens": "random ids"},
        "sparsity": args.sparsity,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "runs": [],
    }
    for method in args.methods:
        start = time.perf_counter()
        model = build_model(args.blocks, seed=0)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats()
        report = prune(model, method, args.sparsity, calibration=calibration, progress=True)
        check = measure_sparsity(model)
        timings = report["timings"]
        run = {
            "method": method,
            "build_model_s": build_s,
            "timings": timings,
            "other_s": timings["total_s"] - sum(v for k, v in timings.items() if k != "total_s"),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "nm_exact": report.get("nm_exact"),
            "all_2to4": check["all_2to4"],
            "weight_sparsity": check["overall"],
            "layers": report["num_layers"],
        }
        result["runs"].append(run)
        path.write_text(json.dumps(result, indent=1) + "\n")
        parts = " ".join(f"{k.removesuffix('_s')}={v:.1f}s" for k, v in timings.items())
        print(f"{method} {args.sparsity}: {parts} peak {run['peak_memory_gib']:.1f} GiB 2:4 ok {check['all_2to4']}")
        del model
        torch.cuda.empty_cache()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
