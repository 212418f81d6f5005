"""Plot speedup over dense cuBLAS against M, one panel per layer shape, from a ``bench/layers.py`` JSON.

python bench/plot_layers.py bench/results/layers.json --out bench/results/layers.png
python bench/plot_layers.py bench/results/layers.json --stream    # -> layers_stream.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLES = {
    "ours_auto": ("SparseLinear (auto)", "C0", "-"),
    "ours_sparse_mma": ("sparse tensor-core mma.sp (forced)", "C4", ":"),
    "ours_triton_small": ("Triton small-M (forced)", "C2", ":"),
    "ours_cusparselt": ("our cuSPARSELt (forced)", "C1", ":"),
    "torch_semi": ("torch semi-structured", "C3", "--"),
}


def plot(result: dict, out: Path, column: str = "speedup") -> None:
    """One panel per (N, K): ``column`` (speedup or graph_speedup) of each provider against M, log-x."""
    shapes = list(result["shapes"].items())
    cols = 3
    rows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (shape, names) in zip(axes.flat, shapes, strict=False):
        n, k = map(int, shape.split("x"))
        for provider, (label, color, style) in STYLES.items():
            pts = sorted(
                (r["m"], r[column])
                for r in result["rows"]
                if r["n"] == n and r["k"] == k and r["provider"] == provider and r.get(column)
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=color, marker="o", ms=3, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"N={n} K={k}\n{', '.join(names)}", fontsize=8)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel(f"{column.replace('_', ' ')} vs dense")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shapes) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    env = result["env"]
    fig.suptitle(f"2:4 linear vs dense cuBLAS, {env['gpu']}, torch {env['torch']}, triton {env['triton']} ({column})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: beside the JSON)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--graph", action="store_true", help="plot the CUDA-graph replay speedup")
    which.add_argument("--stream", action="store_true", help="plot the stream speedup (layer copies back to back)")
    args = parser.parse_args()
    result = json.loads(args.json.read_text())
    suffix = "_graph" if args.graph else "_stream" if args.stream else ""
    column = suffix.removeprefix("_") + "_speedup" if suffix else "speedup"
    out = args.out or args.json.with_name(args.json.stem + suffix + ".png")
    plot(result, out, column)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
