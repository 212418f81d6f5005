"""The warpgroup kernel's launch modes side by side (H100/H200): plain, programmatic dependent launch (PDL: a call's
blocks start and set up while the previous kernel of the stream runs) for every launch, and for the selective mode 3
(``sparse_mma.set_launch_mode``; ``SPARSE_LLM_PDL`` sets it for a process).

    python bench/wgmma_pdl.py --out DIR [--shapes 1024x4096 ...] [--ms 1 16 ...]

Per Llama shape and M where the tuned dispatch (the committed tables) takes the warpgroup kernel: dense F.linear and
SparseLinear as a stream of distinct layer copies in one CUDA graph (the grid's stream column; PDL can only act
between kernels of one stream), each mode timed in two alternating rounds (the median kept), and the single call's
CUDA-graph replay after the L2 clear (the grid's graph column: one kernel per replay, nothing to overlap) per mode.
Before timing, the stream's outputs in every mode are checked bit for bit against the plain launch.
Writes ``wgmma_pdl.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COMMITTED_TABLES, llama_shapes, use_tables, write_result  # noqa: E402

from sparse_llm import backends, benchmark  # noqa: E402
from sparse_llm.backends import sparse_mma  # noqa: E402

MODES = {"plain": 0, "pdl": 1, "pdl_selective": 3}
MS = (1, 16, 64, 128, 256, 512, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=None, help="NxK (default: the 10 Llama shapes)")
    parser.add_argument("--ms", type=int, nargs="*", default=list(MS))
    args = parser.parse_args()
    default_mode = sparse_mma.set_launch_mode(0)  # loads the extension before use_tables moves the cache dir
    use_tables(COMMITTED_TABLES)
    shapes = [benchmark.parse_shape(s) for s in args.shapes] if args.shapes else llama_shapes()
    dtype = torch.bfloat16
    rows = []
    for n, k in shapes:
        denses, layers = benchmark.stream_copies(n, k, dtype)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            chosen = backends.select(layers[0], x).name
            if chosen != "sparse_mma":
                print(f"{n}x{k} M={m}: dispatch takes {chosen}, skipped")
                continue
            calls = [lambda layer=layer, x=x: layer(x) for layer in layers]
            outs = {}
            for name, mode in MODES.items():  # each mode's stream gives the plain launch's bits
                sparse_mma.set_launch_mode(mode)
                graph, out = benchmark.capture_graph(lambda calls=calls: [fn() for fn in calls])
                graph.replay()
                torch.cuda.synchronize()
                outs[name] = out
            ok = all(torch.equal(a, b) for name in MODES for a, b in zip(outs[name], outs["plain"], strict=True))
            del outs, graph, out
            stream: dict[str, list[float]] = {name: [] for name in MODES}
            for _ in range(2):
                for name, mode in MODES.items():
                    sparse_mma.set_launch_mode(mode)
                    stream[name].append(benchmark.time_stream_us(calls))
            single = {}
            for name, mode in MODES.items():
                sparse_mma.set_launch_mode(mode)
                single[name] = benchmark.time_graph_us(calls[0])
            sparse_mma.set_launch_mode(default_mode)
            dense_stream = benchmark.time_stream_us([lambda w=w, x=x: F.linear(x, w) for w in denses])
            dense_single = benchmark.time_graph_us(lambda x=x, w=denses[0]: F.linear(x, w))
            row = {
                "n": n,
                "k": k,
                "m": m,
                "copies": len(layers),
                "bits_equal": ok,
                "dense_stream_us": dense_stream,
                "dense_graph_us": dense_single,
                "stream_us": {name: statistics.median(v) for name, v in stream.items()},
                "stream_rounds_us": stream,
                "graph_us": single,
            }
            rows.append(row)
            print(
                f"{n}x{k} M={m}: bits {'ok' if ok else 'DIFFER'}; stream dense {dense_stream:.2f} "
                + " ".join(f"{name} {row['stream_us'][name]:.2f}" for name in MODES)
                + f" us; graph dense {dense_single:.2f} "
                + " ".join(f"{name} {single[name]:.2f}" for name in MODES)
            )
        torch.cuda.empty_cache()
    if not rows:
        raise SystemExit("no (shape, M) asked for is one where the dispatch takes the warpgroup kernel")
    summary = {}
    for name in MODES:
        summary[name] = {
            "stream_speedup_median": statistics.median(r["dense_stream_us"] / r["stream_us"][name] for r in rows),
            "graph_speedup_median": statistics.median(r["dense_graph_us"] / r["graph_us"][name] for r in rows),
            "stream_vs_plain_median": statistics.median(r["stream_us"]["plain"] / r["stream_us"][name] for r in rows),
        }
    path = write_result(args.out, "wgmma_pdl", {"default_mode": default_mode, "rows": rows, "summary": summary})
    print(summary)
    print(f"wrote {path}; all bits equal: {all(r['bits_equal'] for r in rows)}")


if __name__ == "__main__":
    main()
