import sys, torch
sys.path.insert(0, "bench")
import mma_sweep as S
mod = S.build()
dense, values, meta = S.random_packed(64, 128, torch.bfloat16)
x = torch.randn(4, 128, device="cuda", dtype=torch.float16)
try:
    mod.spmm24_mma(x, values, meta, None, 16, 8, 1, 0)
except RuntimeError as e:
    print("top-level TORCH_CHECK raised cleanly:", str(e)[:80], flush=True)
