"""How close do the pruning kernels come to the memory floor? (issue 4)

For each Llama weight shape: the fused score + 2:4 mask, score + 2:4 mask + pack and per-row top-k kernels
against their torch references and against the memory floor (the bytes the work must move, over the copy
bandwidth measured in the same run with a large device-to-device copy); Σx² on calibration-sized activations.
Timings are medians of ``triton.testing.do_bench`` (which flushes L2 between repetitions).

    python bench/mask_kernels.py --out DIR            # results JSON (+ plot with --plot)
    python bench/mask_kernels.py --out DIR --sweep nm topk act_norm   # also time launch configurations
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from common import copy_bandwidth
from sparse_llm.kernels import act_norm as norm_kernels
from sparse_llm.kernels import nm_mask as nm_kernels
from sparse_llm.kernels import row_topk as topk_kernels
from triton.testing import do_bench, do_bench_cudagraph

from sparse_llm.benchmark import environment
from sparse_llm.masks import pruned_count
from sparse_llm.ops.act_norm import accumulate_sq_norm_, accumulate_sq_norm_reference
from sparse_llm.ops.nm_mask import (
    score_nm_mask,
    score_nm_mask_reference,
    score_pack_24,
    score_pack_24_reference,
)
from sparse_llm.ops.row_topk import score_row_topk_mask, score_row_topk_mask_reference

# (N, K) of nn.Linear weights (out_features, in_features).
WEIGHT_SHAPES = {
    "Llama-2-7B q/k/v/o_proj": (4096, 4096),
    "Llama-2-7B gate/up_proj": (11008, 4096),
    "Llama-2-7B down_proj": (4096, 11008),
    "Llama-3-70B q/o_proj": (8192, 8192),
    "Llama-3-70B down_proj": (8192, 28672),
    "Llama-3-70B gate/up_proj": (28672, 8192),
}
# (tokens, K) activations fed to the Σx² hook: 128 x 2048-token calibration samples hit by one Linear.
ACTIVATION_SHAPES = {
    "Llama-2-7B hidden, 8 x 2048 tokens": (16384, 4096),
    "Llama-3-70B hidden, 8 x 2048 tokens": (16384, 8192),
    "Llama-2-7B MLP, 8 x 2048 tokens": (16384, 11008),
}
DTYPE = torch.bfloat16
DEVICE = "cuda"
# The fused kernels as registered custom ops (the public functions add input checks and a host sync).
NM_MASK_OP = torch.ops.sparse_llm.score_nm_mask
PACK_24_OP = torch.ops.sparse_llm.score_pack_24
ROW_TOPK_OP = torch.ops.sparse_llm.score_row_topk_mask
ACT_NORM_OP = torch.ops.sparse_llm.accumulate_sq_norm


def median_ms(fn, rep: int = 200) -> float:
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def weight_and_scale(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Never zeros (they can time faster than real data); a Wanda-like positive column norm.
    w = (torch.randn(n, k, device=DEVICE) * 0.02).to(DTYPE)
    scale = torch.rand(k, device=DEVICE) + 0.5
    return w, scale


def row(kind: str, model: str, shape, provider: str, ms: float, nbytes: int, bw: float, **extra) -> dict:
    floor_ms = nbytes / bw / 1e6
    return {
        "kernel": kind, "model": model, "shape": list(shape), "dtype": str(DTYPE).removeprefix("torch."),
        "provider": provider, "ms": ms, "bytes": nbytes, "gbs": nbytes / ms / 1e6, "floor_ms": floor_ms,
        "fraction_of_floor": floor_ms / ms, **extra,
    }  # fmt: skip


def bench_weight(model: str, n: int, k: int, bw: float, with_reference: bool) -> list[dict]:
    """The three weight kernels on one (N, K) shape: kernel alone, public API, torch reference."""
    w, scale = weight_and_scale(n, k)
    elems = n * k
    mask_bytes = elems * 2 + elems  # read W (bf16), write the bool mask
    pack_bytes = elems * 2 + elems + elems // 8  # read W, write values (K/2 bf16) + meta (K/16 int16)
    keep = k - pruned_count(k, 0.5)
    cases = [
        ("nm_mask 2:4", mask_bytes, lambda: NM_MASK_OP(w, scale, 2, 4), lambda: score_nm_mask(w, scale),
         lambda: score_nm_mask_reference(w, scale)),
        ("nm_mask 2:4 + pack", pack_bytes, lambda: PACK_24_OP(w, scale), lambda: score_pack_24(w, scale),
         lambda: score_pack_24_reference(w, scale)),
        ("row_topk 50%", mask_bytes,
         lambda: ROW_TOPK_OP(w, scale, keep, topk_kernels.MAX_RESIDENT_K, topk_kernels.CHUNK_K),
         lambda: score_row_topk_mask(w, scale, 0.5), lambda: score_row_topk_mask_reference(w, scale, 0.5)),
    ]  # fmt: skip
    rows = []
    for kind, nbytes, op, api, reference in cases:
        done = [
            row(kind, model, (n, k), "triton kernel", median_ms(op), nbytes, bw),
            row(kind, model, (n, k), "triton (public API)", median_ms(api), nbytes, bw),
        ]
        if with_reference:
            got, want = api(), reference()
            if isinstance(got, torch.Tensor):
                exact = torch.equal(got, want)
            else:
                values_exact = torch.equal(got.values.view(torch.int16), want[0].view(torch.int16))
                exact = values_exact and torch.equal(got.meta, want[1])
            ms = median_ms(reference, rep=300)
            done.append(row(kind, model, (n, k), "torch reference", ms, nbytes, bw, bit_exact=exact))
        print(f"{kind:20s} {model:26s} " + "  ".join(f"{r['provider']}={r['ms']:.3f}ms" for r in done))
        rows += done
    return rows


def bench_activation(model: str, m: int, k: int, bw: float, with_reference: bool) -> list[dict]:
    """Σx² over one (tokens, K) activation: the kernel against the torch reference."""
    x = torch.randn(m, k, device=DEVICE).to(DTYPE)
    acc = torch.zeros(k, device=DEVICE)
    nbytes = m * k * 2  # read x once; the (K,) accumulator is negligible
    # The kernels' GPU time without host launch costs: the op (no host sync) replayed in a CUDA graph.
    graph_ms = do_bench_cudagraph(lambda: ACT_NORM_OP(acc, x, False), rep=100, return_mode="median")
    done = [
        row("act_norm", model, (m, k), "triton kernel (CUDA graph)", graph_ms, nbytes, bw),
        row("act_norm", model, (m, k), "triton kernel", median_ms(lambda: ACT_NORM_OP(acc, x, True)), nbytes, bw),
        row("act_norm", model, (m, k), "triton (public API)", median_ms(lambda: accumulate_sq_norm_(acc, x)),
            nbytes, bw),
        row("act_norm", model, (m, k), "triton (API, no sync)",
            median_ms(lambda: accumulate_sq_norm_(acc, x, check_finite=False)), nbytes, bw),
    ]  # fmt: skip
    if with_reference:
        ms = median_ms(lambda: accumulate_sq_norm_reference(acc, x))
        done.append(row("act_norm", model, (m, k), "torch reference", ms, nbytes, bw))
    print(f"{'act_norm':20s} {model:26s} " + "  ".join(f"{r['provider']}={r['ms']:.3f}ms" for r in done))
    return done


def sweep_nm(bw: float) -> list[dict]:
    """nm_mask / pack launch configurations on the largest weight."""
    n, k = WEIGHT_SHAPES["Llama-3-70B gate/up_proj"]
    w, scale = weight_and_scale(n, k)
    rows = []
    saved = (nm_kernels.BLOCK_N, nm_kernels.BLOCK_K, nm_kernels.NUM_WARPS)
    for bn, bk, nw in itertools.product((8, 16, 32), (128, 256, 512), (4, 8)):
        nm_kernels.BLOCK_N, nm_kernels.BLOCK_K, nm_kernels.NUM_WARPS = bn, bk, nw
        cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": nw}
        ms_mask = median_ms(lambda: NM_MASK_OP(w, scale, 2, 4))
        ms_pack = median_ms(lambda: PACK_24_OP(w, scale))
        rows.append(row("nm_mask 2:4", "sweep", (n, k), "triton kernel", ms_mask, n * k * 3, bw, config=cfg))
        rows.append(row("nm_mask 2:4 + pack", "sweep", (n, k), "triton kernel", ms_pack, n * k * 25 // 8, bw,
                        config=cfg))  # fmt: skip
        print("sweep nm", cfg, f"mask {ms_mask:.3f} pack {ms_pack:.3f}")
    nm_kernels.BLOCK_N, nm_kernels.BLOCK_K, nm_kernels.NUM_WARPS = saved
    return rows


def sweep_topk(bw: float, n: int, k: int) -> list[dict]:
    """row_topk: warps of the register-resident kernel (one chunked configuration for reference)."""
    w, scale = weight_and_scale(n, k)
    keep = k - pruned_count(k, 0.5)
    rows = []
    saved = topk_kernels.resident_num_warps
    configs = [(32768, warps) for warps in ((2, 4, 8) if k <= 8192 else (4, 8, 16))] + [(0, 4)]
    for resident, warps in configs:
        topk_kernels.resident_num_warps = lambda _block_k, warps=warps: warps
        ms = median_ms(lambda resident=resident: ROW_TOPK_OP(w, scale, keep, resident, 4096))
        cfg = {"num_warps": warps, "max_resident_k": resident, "chunk_k": 4096}
        rows.append(row("row_topk 50%", "sweep", (n, k), "triton kernel", ms, n * k * 3, bw, config=cfg))
        print("sweep topk", (n, k), cfg, f"{ms:.3f}")
    topk_kernels.resident_num_warps = saved
    return rows


def kernel_resources() -> dict:
    """Registers and spills of the compiled kernels (the compiler's report; no timing)."""
    n, k = 64, 8192
    w, scale = weight_and_scale(n, k)
    bad = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    mask = torch.empty(n, k, dtype=torch.uint8, device=DEVICE)
    vals = torch.empty(n, k // 2, dtype=DTYPE, device=DEVICE)
    meta = torch.empty(n, k // 16, dtype=torch.int16, device=DEVICE)
    part = torch.empty(4, k, device=DEVICE)
    nm = {"BLOCK_N": nm_kernels.BLOCK_N, "BLOCK_K": nm_kernels.BLOCK_K, "num_warps": nm_kernels.NUM_WARPS}
    launches = {
        "score_nm_mask_kernel": lambda: nm_kernels.score_nm_mask_kernel[(1, 1)](
            w, scale, mask, bad, n, k, k, HAS_SCALE=True, KEEP=2, M=4, **nm),
        "score_pack24_kernel": lambda: nm_kernels.score_pack24_kernel[(1, 1)](
            w, scale, vals, meta, bad, n, k, k, HAS_SCALE=True, **nm),
        "sq_norm_partial_kernel": lambda: norm_kernels.sq_norm_partial_kernel[(1, 1)](
            w, part, bad, n, k, k, n, BLOCK_M=norm_kernels.BLOCK_M, BLOCK_K=norm_kernels.BLOCK_K,
            num_warps=norm_kernels.NUM_WARPS),
    }  # fmt: skip
    for warps in (2, 4, 8):
        launches[f"row_topk_resident_kernel K=8192 num_warps={warps}"] = lambda warps=warps: (
            topk_kernels.row_topk_resident_kernel[(1,)](
                w, scale, mask, bad, k, k // 2, k, HAS_SCALE=True, BLOCK_K=k, num_warps=warps)
        )  # fmt: skip
    out = {}
    for name, launch in launches.items():
        compiled = launch()
        out[name] = {"n_regs": getattr(compiled, "n_regs", None), "n_spills": getattr(compiled, "n_spills", None)}
    print("resources:", out)
    return out


def sweep_act_norm(bw: float) -> list[dict]:
    """act_norm tile shapes, warps and programs per SM on the 70B hidden activation."""
    m, k = ACTIVATION_SHAPES["Llama-3-70B hidden, 8 x 2048 tokens"]
    x = torch.randn(m, k, device=DEVICE).to(DTYPE)
    acc = torch.zeros(k, device=DEVICE)
    rows = []
    names = ("BLOCK_M", "BLOCK_K", "NUM_WARPS", "PROGRAMS_PER_SM")
    saved = [getattr(norm_kernels, name) for name in names]
    for values in itertools.product((16, 32, 64), (128, 256, 512), (4, 8), (2, 4, 8)):
        if values[0] * values[1] > 16384 or values[0] * values[1] < 4096:
            continue
        for name, value in zip(names, values, strict=True):
            setattr(norm_kernels, name, value)
        ms = median_ms(lambda: ACT_NORM_OP(acc, x, True))
        cfg = dict(zip(names, values, strict=True))
        rows.append(row("act_norm", "sweep", (m, k), "triton kernel", ms, m * k * 2, bw, config=cfg))
        print("sweep act_norm", cfg, f"{ms:.3f}")
    for name, value in zip(names, saved, strict=True):
        setattr(norm_kernels, name, value)
    return rows


def plot(results: Path, out: Path) -> None:
    """Bar chart: fraction of the memory floor reached by each provider, per kernel and shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    rows = [r for r in data["rows"] if r["model"] != "sweep"]
    kinds = list(dict.fromkeys(r["kernel"] for r in rows))
    fig, axes = plt.subplots(len(kinds), 1, figsize=(10, 3 * len(kinds)), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        sel = [r for r in rows if r["kernel"] == kind]
        labels = list(dict.fromkeys(f"{r['shape'][0]}x{r['shape'][1]}" for r in sel))
        providers = list(dict.fromkeys(r["provider"] for r in sel))
        width = 0.8 / len(providers)
        for i, provider in enumerate(providers):
            frac = {
                f"{r['shape'][0]}x{r['shape'][1]}": r["fraction_of_floor"] for r in sel if r["provider"] == provider
            }
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [frac.get(label, 0) for label in labels], width, label=provider)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels)
        ax.axhline(0.8, color="gray", linestyle="--", linewidth=0.8)
        ax.set_ylabel("fraction of memory floor")
        ax.set_title(f"{kind} ({data['environment']['gpu']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for mask_kernels.json (+ .png)")
    parser.add_argument(
        "--sweep", nargs="*", default=[], choices=["nm", "topk", "act_norm"], help="also time launch configurations"
    )
    parser.add_argument("--sweep-only", action="store_true", help="time launch configurations only")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) torch references")
    parser.add_argument("--plot", action="store_true", help="draw mask_kernels.png from the JSON")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("bench/mask_kernels.py needs a CUDA GPU")
    bw = copy_bandwidth() / 1e9
    print(f"copy bandwidth: {bw:.0f} GB/s")
    rows = []
    if "nm" in args.sweep:
        rows += sweep_nm(bw)
    if "topk" in args.sweep:
        rows += sweep_topk(bw, 28672, 8192) + sweep_topk(bw, 8192, 28672)
    if "act_norm" in args.sweep:
        rows += sweep_act_norm(bw)
    if not args.sweep_only:
        for model, (n, k) in WEIGHT_SHAPES.items():
            rows += bench_weight(model, n, k, bw, not args.no_reference)
        for model, (m, k) in ACTIVATION_SHAPES.items():
            rows += bench_activation(model, m, k, bw, not args.no_reference)
    config = {
        "nm_mask": {"BLOCK_N": nm_kernels.BLOCK_N, "BLOCK_K": nm_kernels.BLOCK_K, "num_warps": nm_kernels.NUM_WARPS},
        "row_topk": {"MAX_RESIDENT_K": topk_kernels.MAX_RESIDENT_K, "CHUNK_K": topk_kernels.CHUNK_K,
                     "num_warps(8192)": topk_kernels.resident_num_warps(8192),
                     "num_warps(32768)": topk_kernels.resident_num_warps(32768)},
        "act_norm": {"BLOCK_M": norm_kernels.BLOCK_M, "BLOCK_K": norm_kernels.BLOCK_K,
                     "num_warps": norm_kernels.NUM_WARPS, "programs_per_sm": norm_kernels.PROGRAMS_PER_SM},
    }  # fmt: skip
    result = {"environment": environment(), "copy_bandwidth_gbs": bw, "config": config, "resources": kernel_resources(),
              "rows": rows}  # fmt: skip
    path = args.out / "mask_kernels.json"
    path.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(path, args.out / "mask_kernels.png")
    print(f"\n{'kernel':20s} {'shape':>12s} {'provider':20s} {'ms':>9s} {'GB/s':>7s} {'floor':>6s}")
    for r in rows:
        if r["model"] != "sweep":
            shape = f"{r['shape'][0]}x{r['shape'][1]}"
            ms, gbs, frac = r["ms"], r["gbs"], r["fraction_of_floor"]
            print(f"{r['kernel']:20s} {shape:>12s} {r['provider']:20s} {ms:9.3f} {gbs:7.0f} {frac:6.2f}")


if __name__ == "__main__":
    main()
