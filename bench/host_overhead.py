"""Host time of one eager call: what a model that runs its layers without CUDA graphs pays per linear on the CPU.

For each M, dense ``F.linear`` and SparseLinear (auto with and without its plans, and each GPU backend forced) are
called back to back without synchronizing, and the wall time per call is the time the host needs to enqueue it (the
GPU queue never fills: a few hundred calls). Median of 7 batches of 200 calls; dense and the auto path (2-D and
3-D inputs, with and without plans) in alternation, 3 rounds, the median of the rounds. With ``--profile``,
cProfile's top functions of the auto path at each M are written beside the JSON (``host_profile_M<m>.txt``).

    python bench/host_overhead.py --out DIR [--profile] [--tables [PATH ...]]

Writes ``host_overhead.json``. The eager columns of the layer grid (``bench/layers.py``) turn into host-bound
"windows" when this time exceeds what the GPU spends per timed call (the 256 MB cache clear and the kernel).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_tables_argument, apply_tables, host_profile, write_result  # noqa: E402

from sparse_llm import Sparse24Weight, SparseLinear, backends  # noqa: E402
from sparse_llm.benchmark import _random_24, enqueue_us  # noqa: E402

MS = (1, 16, 256, 4096)


def host_us(fn, calls: int = 200, batches: int = 7) -> float:
    """Median over batches of the host microseconds per call of ``fn`` called ``calls`` times without a sync (after
    one call that is not counted)."""
    fn()
    return enqueue_us(fn, calls, batches)


def measure(layer: SparseLinear, dense: torch.Tensor, bias: torch.Tensor, m: int) -> dict:
    """Host microseconds per call at ``m`` tokens: dense, ours (auto: with the layer's plans, without them, and on a
    3-D (1, m, K) input as a Hugging Face model calls it), and each GPU backend forced on the layer."""
    x = torch.randn(m, dense.shape[1], device="cuda", dtype=dense.dtype)
    x3 = x.unsqueeze(0)
    row = {"m": m, "auto_backend": backends.select(layer, x).name}
    # dense, ours with plans and ours without them in alternation, 3 rounds (this host drifts by tens of percent)
    cases = {
        "dense_us": (lambda: F.linear(x, dense, bias), True),
        "dense_3d_us": (lambda: F.linear(x3, dense, bias), True),
        "ours_auto_us": (lambda: layer(x), True),
        "ours_auto_3d_us": (lambda: layer(x3), True),
        "ours_auto_noplans_us": (lambda: layer(x), False),
        "ours_auto_3d_noplans_us": (lambda: layer(x3), False),
    }
    times: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(3):
        for key, (fn, plans) in cases.items():
            backends.USE_PLANS = plans
            try:
                times[key].append(host_us(fn))
            finally:
                backends.USE_PLANS = True
    row.update({key: statistics.median(values) for key, values in times.items()})
    for name in ("sparse_mma", "triton_small", "cusparselt"):
        layer.backend = name
        try:
            row[f"ours_{name}_us"] = host_us(lambda: layer(x))
        except RuntimeError as err:  # forced where it cannot run: say why
            row[f"ours_{name}_us"] = None
            row[f"ours_{name}_note"] = str(err)[:200]
        finally:
            layer.backend = None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--profile", action="store_true", help="also write cProfile's top functions of the auto path")
    add_tables_argument(ap)
    args = ap.parse_args()
    tables = apply_tables(args.tables)
    dense = _random_24(args.n, args.k, torch.bfloat16)
    bias = torch.randn(args.n, device="cuda", dtype=torch.bfloat16)
    layer = SparseLinear.from_weight(Sparse24Weight.from_dense(dense), bias)
    rows = []
    for m in MS:
        row = measure(layer, dense, bias, m)
        rows.append(row)
        times = " ".join(f"{key[:-3]}={val:.1f}" for key, val in row.items() if key.endswith("_us") and val)
        print(f"{args.n}x{args.k} M={m} (auto: {row['auto_backend']}), host us per call: {times}", flush=True)
        if args.profile:
            x = torch.randn(m, args.k, device="cuda", dtype=torch.bfloat16)
            args.out.mkdir(parents=True, exist_ok=True)
            layer(x)  # the first call at this M (caches) is not profiled
            (args.out / f"host_profile_M{m}.txt").write_text(host_profile(lambda x=x: layer(x), calls=2000))
    write_result(args.out, "host_overhead", {"n": args.n, "k": args.k, "tables": tables, "rows": rows})


if __name__ == "__main__":
    main()
