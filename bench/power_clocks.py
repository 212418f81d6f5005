"""What the GPU's clocks and power do during sustained prefill matmuls: dense ``F.linear`` against the 2:4 layer
(cuSPARSELt and the warpgroup kernel forced), back to back for a few seconds each, while ``nvidia-smi`` samples the
SM clock, the power draw and the active clock-event (throttle) reasons every 50 ms.

The question it answers (bench/NOTES.md, sixteenth round): is the M >= 1024 ratio bounded by the sparse kernels or
by the clock the chip can hold while they run (the same power limit for work done twice as fast)?

Usage: python bench/power_clocks.py --out DIR [--seconds 2] [--ms 1024 8192]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import COMMITTED_TABLES, random_packed, use_tables, write_result  # noqa: E402

from sparse_llm import Sparse24Weight, SparseLinear  # noqa: E402

SHAPES = [(28672, 8192), (8192, 28672), (4096, 4096)]
QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"


class Sampler:
    """``nvidia-smi`` in the background, one line per 50 ms, each stamped with the host's clock."""

    def __init__(self):
        self.samples: list[tuple[float, float, float, float, str]] = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "50"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.monotonic(), float(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
            except (ValueError, IndexError):
                continue

    def window(self, t0: float, t1: float) -> dict:
        """Medians of the samples taken between t0 and t1, and how often each throttle-reason mask was seen."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if not inside:
            return {"samples": 0}
        reasons: dict[str, int] = {}
        for s in inside:
            reasons[s[4]] = reasons.get(s[4], 0) + 1
        return {
            "samples": len(inside),
            "sm_mhz": statistics.median(s[1] for s in inside),
            "power_w": statistics.median(s[2] for s in inside),
            "temp_c": statistics.median(s[3] for s in inside),
            "event_reasons": reasons,
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def sustained(fn, seconds: float, sampler: Sampler) -> dict:
    """Run ``fn`` back to back: a warm-up of a quarter of ``seconds``, then ``seconds`` measured (calls per second
    from CUDA events, clocks and power from the samples of the measured part)."""
    fn()
    torch.cuda.synchronize()
    t_end = time.monotonic() + seconds / 4
    while time.monotonic() < t_end:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    calls = 0
    t0 = time.monotonic()
    start.record()
    while time.monotonic() - t0 < seconds:
        for _ in range(10):
            fn()
        calls += 10
        if calls % 100 == 0:
            torch.cuda.synchronize()  # keep the host within ~100 calls of the GPU, so the window is the GPU's
    stop.record()
    torch.cuda.synchronize()
    t1 = time.monotonic()
    return {"calls": calls, "us_per_call": start.elapsed_time(stop) * 1e3 / calls, **sampler.window(t0, t1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--ms", type=int, nargs="+", default=[1024, 8192])
    args = parser.parse_args()
    use_tables(COMMITTED_TABLES)
    limit = subprocess.run(["nvidia-smi", "--query-gpu=power.limit,clocks.max.sm", "--format=csv,noheader"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    print("power limit, max SM clock:", limit, flush=True)
    sampler = Sampler()
    time.sleep(0.5)
    idle = sampler.window(time.monotonic() - 0.4, time.monotonic())
    rows = []
    try:
        for n, k in SHAPES:
            dense, values, meta = random_packed(n, k, torch.bfloat16)
            layer = SparseLinear.from_weight(Sparse24Weight(values, meta))
            for m in args.ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                flops = 2 * m * n * k
                for provider in ("dense", "cusparselt", "sparse_mma", "dense"):
                    if provider == "dense":
                        fn = lambda x=x, w=dense: F.linear(x, w)  # noqa: E731
                    else:
                        layer.backend = provider
                        fn = lambda x=x, layer=layer: layer(x)  # noqa: E731
                    r = sustained(fn, args.seconds, sampler)
                    r.update(n=n, k=k, m=m, provider=provider, tflops=flops / r["us_per_call"] / 1e6)
                    rows.append(r)
                    print(f"{n}x{k} M={m} {provider:>10}: {r['us_per_call']:9.1f} us {r['tflops']:7.1f} TFLOP/s "
                          f"{r.get('sm_mhz', 0):6.0f} MHz {r.get('power_w', 0):6.1f} W "
                          f"{r.get('event_reasons', {})}", flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    finally:
        sampler.stop()
    path = write_result(args.out, "power_clocks", {"power_limit_max_clock": limit, "idle": idle,
                                                    "seconds": args.seconds, "rows": rows})  # fmt: skip
    print("wrote", path)


if __name__ == "__main__":
    main()
