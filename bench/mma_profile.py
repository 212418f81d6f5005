"""Nsight Compute counters of the sparse tensor-core kernel for a few configurations (a profiling aid).

    python bench/mma_profile.py --out DIR [--ncu /usr/local/cuda/bin/ncu] [CONFIG ...]

CONFIG is ``bench/mma_one.py``'s arguments joined by commas: N,K,M,rows,tokens,stages,warps,split[,wgmma[,ct,cr]]
or N,K,M,cusparselt (default: the 28672x8192 tiles of M = 64 and 128). Each one runs ``bench/mma_one.py`` under ncu
(boost clocks kept: ``--clock-control none``), profiling the kernels of its last call (``--profile-from-start off``;
cuSPARSELt's split-K reduction, where it runs one, is a second kernel); the metrics (time, clock, DRAM and L2 bytes,
issue activity, tensor-pipe activity, shared-memory wavefronts and conflicts, and the stall reasons per issued
instruction, and where this ncu has them, the bytes that come into each SM from L2 and its shared-memory bank
reads and writes) are written to ``mma_profile.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT = ("28672,8192,64,32,64,3,8,2", "28672,8192,128,32,128,3,8,2", "28672,8192,128,32,64,3,8,2")
METRICS = (
    "gpu__time_duration.sum",
    "dram__bytes_read.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "lts__t_bytes.sum",
    "smsp__inst_executed.sum",
    "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "regex:sm__pipe_tensor_op_.*_cycles_active\\.avg\\.pct_of_peak_sustained_active$",
    "regex:sm__ops_path_tensor_src_bf16_dst_fp32.*\\.sum$",
    "sm__cycles_elapsed.avg.per_second",
    "l1tex__throughput.avg.pct_of_peak_sustained_active",
    "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",
    "launch__registers_per_thread",
    "launch__grid_size",
    "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio",
)
# What comes into each SM and what its shared-memory banks carry (TMA's copies land in the banks, wgmma reads its
# operands from them): asked for only where this ncu knows the metric (``--query-metrics``), so an older or newer
# ncu drops what it lacks instead of refusing the run.
INGRESS = (
    "l1tex__m_xbar2l1tex_read_bytes.sum",
    "l1tex__m_xbar2l1tex_read_bytes.sum.pct_of_peak_sustained_elapsed",
    "l1tex__m_xbar2l1tex_read_bytes.sum.per_second",
    "l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed",
    "l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed",
    "l1tex__data_bank_reads.sum",
    "l1tex__data_bank_writes.sum",
    "sm__memory_throughput.avg.pct_of_peak_sustained_elapsed",
    "lts__t_sectors_srcunit_tex_op_read.sum",
    "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum",
)


# With --breakdown: the sub-units behind L2's, L1's and the memory system's throughput percentages (which of them
# is the one near its peak), through ncu's ``breakdown:`` prefix.
BREAKDOWN = (
    "breakdown:lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "breakdown:l1tex__throughput.avg.pct_of_peak_sustained_elapsed",
    "breakdown:gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
)


def known_metrics(ncu: str) -> set[str]:
    """The metric base names this ncu knows for the GPU it sees (empty if the query fails)."""
    run = subprocess.run([ncu, "--query-metrics"], capture_output=True, text=True)
    return {line.split()[0] for line in run.stdout.splitlines() if line.strip() and "__" in line.split()[0]}


def metrics(ncu: str) -> tuple[str, ...]:
    known = known_metrics(ncu)
    extra = tuple(m for m in INGRESS if m.split(".")[0] in known)
    print("ingress metrics known to ncu:", extra, "missing:", sorted(set(INGRESS) - set(extra)), flush=True)
    return METRICS + extra


def profile(ncu: str, config: str, wanted: tuple[str, ...] = METRICS) -> dict:
    cmd = [ncu, "--clock-control", "none", "--csv", "--page", "raw", "--profile-from-start", "off", "--metrics",
           ",".join(wanted), sys.executable, str(HERE / "mma_one.py"), *config.split(",")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return {"config": config, "error": (run.stderr or run.stdout)[-2000:]}
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    table = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, units = table[0], table[1]
    kernels = []
    for values in table[2:]:
        out = {}
        for name, unit, value in zip(header, units, values, strict=False):
            if name == "Kernel Name":
                out["kernel"] = value
            if "__" not in name:
                continue
            try:
                out[name] = float(value.replace(",", ""))
            except ValueError:
                out[name] = value
            if unit:
                out[name + ".unit"] = unit
        stalls = {k.split("stalled_")[1].split("_per_issue")[0]: v for k, v in out.items()
                  if "issue_stalled" in k and not k.endswith(".unit") and isinstance(v, float)}  # fmt: skip
        top = dict(sorted(stalls.items(), key=lambda kv: -kv[1])[:8])
        shown = {k: v for k, v in out.items() if not k.endswith(".unit") and "issue_stalled" not in k
                 and not k.startswith(("device__", "c2clink__"))}  # fmt: skip
        print(config, out.get("kernel", "")[:100], shown, "stalls:", top, flush=True)
        kernels.append({"metrics": out, "top_stalls": top})
    return {"config": config, "kernels": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ncu", default="/usr/local/cuda/bin/ncu")
    parser.add_argument("--breakdown", action="store_true", help="also the sub-metrics of the throughput percentages")
    parser.add_argument("configs", nargs="*", default=list(DEFAULT))
    args = parser.parse_args()
    wanted = metrics(args.ncu) + (BREAKDOWN if args.breakdown else ())
    runs = [profile(args.ncu, c, wanted) for c in args.configs]
    write_result(args.out, "mma_profile", {"ncu": args.ncu, "metrics": list(wanted), "runs": runs})


if __name__ == "__main__":
    main()
