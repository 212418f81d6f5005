"""Tensor-core issue rate of the warp-level MMA instructions the sparse kernel can use (H100: is mma.sp the limit?).

    python bench/mma_peak.py --out DIR

Builds ``bench/csrc/mma_peak.cu`` (register-only loops of 8 independent MMAs per warp, no memory traffic) and times
plain ``mma.sp``, ``mma.sp::ordered_metadata`` (both m16n8k32 bf16, 2:4 sparse A) and dense ``mma`` m16n8k16 bf16
over a range of warps per SM. Reports dense-equivalent TFLOP/s (a sparse m16n8k32 counts as 16x8x32 MACs) and
cycles per instruction per SM sub-partition at the clock read from the device. Writes ``mma_peak.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

VARIANTS = {0: ("mma.sp m16n8k32", 16 * 8 * 32), 1: ("mma.sp::ordered_metadata m16n8k32", 16 * 8 * 32),
            2: ("mma m16n8k16 (dense)", 16 * 8 * 16)}  # fmt: skip
NACC = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=4096)
    args = parser.parse_args()
    src = Path(__file__).resolve().parent / "csrc" / "mma_peak.cu"
    mod = load("sparse_llm_mma_peak", [str(src)], extra_cuda_cflags=["-O3", "-gencode=arch=compute_90,code=sm_90"],
               verbose=False)  # fmt: skip
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    clock_ghz = getattr(props, "clock_rate", 0) / 1e6 or None  # kHz -> GHz where torch exposes it
    sink = torch.zeros(1024, device="cuda")
    rows = []
    for v, (name, macs) in VARIANTS.items():
        for warps_per_sm in (4, 8, 16, 32):
            blocks, warps = sms * (warps_per_sm // 4), 4
            times = [mod.run(v, blocks, warps, args.iters, sink) for _ in range(5)]
            ms = statistics.median(times)
            n_mma = blocks * warps * args.iters * NACC
            tflops = 2 * macs * n_mma / (ms * 1e-3) / 1e12
            row = {"instruction": name, "warps_per_sm": warps_per_sm, "ms": ms, "dense_equiv_tflops": tflops}
            if clock_ghz:
                row["cycles_per_mma_per_subpartition"] = ms * 1e-3 * clock_ghz * 1e9 / (n_mma / (4 * sms))
            rows.append(row)
            print(f"{name:36s} {warps_per_sm:3d} warps/SM: {tflops:7.1f} TFLOP/s"
                  + (f", {row['cycles_per_mma_per_subpartition']:.1f} cycles/mma/sub-partition" if clock_ghz else ""),
                  flush=True)  # fmt: skip
    write_result(args.out, "mma_peak", {"sms": sms, "clock_ghz_reported": clock_ghz, "iters": args.iters,
                                        "nacc": NACC, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
