"""Issue rate of the warpgroup MMA with both operands in shared memory: how much of the tensor cores' rate can a
warpgroup tile reach with nothing but its wgmma (no copies, barriers or metadata loads)?

    python bench/wgmma_peak.py --out DIR

Builds ``bench/csrc/wgmma_peak.cu`` with nvcc (standalone, no torch extension: a few seconds) and runs, one block
per SM, every (tokens, consumer warpgroups) tile of the warpgroup kernel with 1 and 2 groups in flight, plus dense
m64nNk16 as the harness's own check (it must come near the dense rate). Reports each tile's share of the bf16 rate
per SM clock (sparse: 8192 dense-equivalent FLOP per clock per SM, dense: 4096), from clock64 inside the blocks, so
the power cap's clock does not enter it, and TFLOP/s from the wall time. Writes ``wgmma_peak.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "csrc"))
from common import write_result  # noqa: E402
from gen_wgmma_sp import accumulators  # noqa: E402  (the accumulator operands of the kernel's own wrappers)


def dense_wrapper(tokens: int) -> str:
    """``wgmma_dense<tokens>(d, a, b)``: d (64 x tokens, fp32) += A (64 x 16) . B (16 x tokens), bf16, both from
    shared-memory descriptors (an asm statement needs its operand list written out)."""
    regs, acc, outs = accumulators(tokens)
    return (
        f"template <>\n__device__ __forceinline__ void wgmma_dense<{tokens}>(float* d, uint64_t a, uint64_t b) {{\n"
        f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + 2}, 0;\\n"\n'
        f'      "wgmma.mma_async.sync.aligned.m64n{tokens}k16.f32.bf16.bf16 {{{acc}}}, %{regs}, %{regs + 1}, '
        f'p, 1, 1, 0, 0;\\n}}\\n"\n'
        f'      : {outs}\n      : "l"(a), "l"(b), "r"(1));\n}}\n'
    )


def sparse_register_a_wrapper(tokens: int) -> str:
    """``wgmma_sp_ra<tokens>(d, a0, a1, a2, a3, b, e)``: the sparse m64nNk32 bf16 instruction with A (64 x 16 kept
    values) in four registers per thread, B from a descriptor, metadata e, selector 0."""
    regs, acc, outs = accumulators(tokens)
    a = ", ".join(f"%{regs + i}" for i in range(4))
    return (
        f"template <>\n__device__ __forceinline__ void wgmma_sp_ra<{tokens}>(float* d, uint32_t a0, uint32_t a1, "
        f"uint32_t a2, uint32_t a3, uint64_t b, uint32_t e) {{\n"
        f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + 6}, 0;\\n"\n'
        f'      "wgmma.mma_async.sp.sync.aligned.m64n{tokens}k32.f32.bf16.bf16 {{{acc}}}, {{{a}}}, %{regs + 4}, '
        f'%{regs + 5}, 0, p, 1, 1, 0;\\n}}\\n"\n'
        f'      : {outs}\n      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(e), "r"(1));\n}}\n'
    )


def wrappers_header() -> str:
    body = "".join(dense_wrapper(t) for t in (64, 128, 256)) + "".join(
        sparse_register_a_wrapper(t) for t in (64, 128, 256)
    )
    return (
        "#pragma once\n#include <cstdint>\nnamespace {\ntemplate <int N>\n"
        "__device__ __forceinline__ void wgmma_dense(float* d, uint64_t a, uint64_t b);\n"
        "template <int N>\n__device__ __forceinline__ void wgmma_sp_ra(float* d, uint32_t a0, uint32_t a1, "
        "uint32_t a2, uint32_t a3, uint64_t b, uint32_t e);\n"
        "#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)\n" + body + "#endif\n}  // namespace\n"
    )


def build(workdir: Path) -> Path:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        raise RuntimeError("wgmma_peak: no CUDA toolkit found (torch.utils.cpp_extension.CUDA_HOME is None)")
    (workdir / "wgmma_peak_wrappers.cuh").write_text(wrappers_header())
    exe = workdir / "wgmma_peak"
    cmd = [str(Path(CUDA_HOME) / "bin" / "nvcc"), "-arch=sm_90a", "-O3", "-std=c++17", f"-I{ROOT / 'csrc'}",
           f"-I{workdir}", str(ROOT / "bench" / "csrc" / "wgmma_peak.cu"), "-o", str(exe)]  # fmt: skip
    subprocess.run(cmd, check=True)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=2048, help="groups of 4 instructions per warpgroup")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=240, help="seconds before the benchmark is stopped")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        proc = subprocess.Popen([str(exe), str(args.iters), str(args.reps)], stdout=subprocess.PIPE, text=True)
        timer = threading.Timer(args.timeout, proc.kill)  # a configuration that never returns still leaves the rest
        timer.start()
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            lines.append(r)
            if "kind" in r:
                print(f"{r['kind']:16s} tokens {r['tokens']:3d} x {r['warpgroups']} warpgroups, {r['groups_in_flight']}"
                      f" in flight, {r['mode_name']:42s}: {100 * r['share_of_peak_per_clock']:5.1f}% of the rate per "
                      f"clock, {r['dense_equiv_tflops']:7.1f} TFLOP/s  {r['error']}", flush=True)  # fmt: skip
        proc.wait()
        timer.cancel()
    head, rows = lines[0], lines[1:]
    write_result(args.out, "wgmma_peak", {**head, "iters": args.iters, "reps": args.reps, "rows": rows,
                                          "returncode": proc.returncode})  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"wgmma_peak: the benchmark exited with {proc.returncode} after {len(rows)} configurations")


if __name__ == "__main__":
    main()
