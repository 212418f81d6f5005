"""The warpgroup kernel's persistent grid (stream-K) against the tuned plain grid, at small M (H100/H200).

    python bench/persistent_grid.py --out DIR [--shapes 1024x4096 ...] [--ms 1 16 64]

Per Llama shape and M where the tuned dispatch (the committed tables) takes the warpgroup kernel: the tuned
configuration and every persistent-grid configuration the tuner tries (``tune.wgmma_candidates`` with ``blocks`` > 0),
each checked against F.linear on the masked dense weight (relative error < 1e-2) and timed as the grid's graph column
(one call replayed after the L2 clear); then dense F.linear, the tuned configuration and the fastest persistent one as
the grid's stream column (distinct layer copies back to back in one CUDA graph). Writes ``persistent_grid.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COMMITTED_TABLES, llama_shapes, rel_err, use_tables, write_result  # noqa: E402

from sparse_llm import backends, benchmark, tune  # noqa: E402
from sparse_llm.backends import sparse_mma  # noqa: E402

MS = (1, 16, 64)


def _calls(layers, x, cfg) -> list:
    """One call of ``cfg`` per layer copy (SparseLinear's own L2 policy for W, as in ``sparse_mma.bound``)."""
    return [sparse_mma.bound(layer.values, layer.meta, None, cfg, x.shape[0]) for layer in layers]


def measure(n: int, k: int, m: int, denses: list, layers: list, wrong: list) -> dict | None:
    """One (shape, M): the row of the result, or None where the dispatch does not take the warpgroup kernel or no
    persistent configuration is right; configurations with wrong results go to ``wrong``."""
    dtype, dev = denses[0].dtype, denses[0].device
    x = torch.randn(m, k, device=dev, dtype=dtype)
    if backends.select(layers[0], x).name != "sparse_mma":
        print(f"{n}x{k} M={m}: dispatch does not take the warpgroup kernel, skipped")
        return None
    tuned = tune.mma_config(n, k, m, dtype, dev)
    persistent = [c for c in tune.wgmma_candidates(m, n, k, dev) if c.blocks]
    ref = F.linear(x.float(), denses[0].float())
    graph_us, errors = {}, {}
    for cfg in [tuned, *persistent]:
        fn = _calls(layers[:1], x, cfg)[0]
        errors[str(cfg.as_dict())] = err = rel_err(fn(x), ref)
        if err >= 1e-2:
            wrong.append({"n": n, "k": k, "m": m, "config": cfg.as_dict(), "rel_err": err})
            continue
        graph_us[cfg] = benchmark.time_graph_us(lambda fn=fn: fn(x))
    if tuned not in graph_us or not any(c.blocks for c in graph_us):
        print(f"{n}x{k} M={m}: nothing to compare (errors: {errors})")
        return None
    best = min((c for c in graph_us if c.blocks), key=graph_us.get)
    stream = {
        "dense": benchmark.time_stream_us([lambda w=w: F.linear(x, w) for w in denses]),
        "tuned": benchmark.time_stream_us([lambda f=f: f(x) for f in _calls(layers, x, tuned)]),
        "persistent": benchmark.time_stream_us([lambda f=f: f(x) for f in _calls(layers, x, best)]),
    }
    dense_graph = benchmark.time_graph_us(lambda: F.linear(x, denses[0]))
    print(f"{n}x{k} M={m}: graph dense {dense_graph:.1f} tuned {graph_us[tuned]:.1f} persistent "
          f"{graph_us[best]:.1f} ({best.wgmma_tile[:2]}, {best.blocks} blocks); stream dense {stream['dense']:.1f} "
          f"tuned {stream['tuned']:.1f} persistent {stream['persistent']:.1f} us")  # fmt: skip
    return {
        "n": n, "k": k, "m": m, "copies": len(layers),
        "tuned": tuned.as_dict(), "best_persistent": best.as_dict(),
        "graph_us": {"dense": dense_graph, "tuned": graph_us[tuned], "persistent": graph_us[best]},
        "persistent_graph_us": [{"blocks": c.blocks, "tile": c.wgmma_tile, "us": t}
                                for c, t in graph_us.items() if c.blocks],
        "stream_us": stream, "rel_err": errors,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=None, help="NxK (default: the 10 Llama shapes)")
    parser.add_argument("--ms", type=int, nargs="*", default=list(MS))
    args = parser.parse_args()
    sparse_mma.load_wgmma_extension()  # before use_tables moves the cache dir
    use_tables(COMMITTED_TABLES)
    shapes = [benchmark.parse_shape(s) for s in args.shapes] if args.shapes else llama_shapes()
    rows, wrong = [], []
    for n, k in shapes:
        denses, layers = benchmark.stream_copies(n, k, torch.bfloat16)
        rows += [r for m in args.ms if (r := measure(n, k, m, denses, layers, wrong)) is not None]
        denses.clear()
        layers.clear()
        torch.cuda.empty_cache()
    if not rows:
        raise SystemExit("no (shape, M) asked for is one where the dispatch takes the warpgroup kernel")
    summary = {}
    for col in ("graph_us", "stream_us"):
        summary[col] = {
            "tuned_over_dense_median": statistics.median(r[col]["dense"] / r[col]["tuned"] for r in rows),
            "persistent_over_dense_median": statistics.median(r[col]["dense"] / r[col]["persistent"] for r in rows),
            "tuned_over_persistent_median": statistics.median(r[col]["tuned"] / r[col]["persistent"] for r in rows),
        }
    path = write_result(args.out, "persistent_grid", {"rows": rows, "wrong": wrong, "summary": summary})
    print(summary)
    print(f"wrote {path}; wrong results: {len(wrong)}")
    if wrong:
        raise SystemExit(f"{len(wrong)} configurations gave wrong results: {wrong[:3]}")


if __name__ == "__main__":
    main()
