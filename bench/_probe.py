import sys, torch, torch.nn.functional as F
sys.path.insert(0, "bench")
import mma_sweep as S
mod = S.build()
case = sys.argv[1]
n, k, m, bias, rows, tokens, split, dt = eval(case)
dtype = getattr(torch, dt)
dense, values, meta = S.random_packed(n, k, dtype)
x = torch.randn(m, k, device="cuda", dtype=dtype)
b = torch.randn(n, device="cuda", dtype=dtype) if bias else None
print("calling", flush=True)
out = S.run(mod, x, values, meta, b, rows, tokens, split, 0)
torch.cuda.synchronize()
print(case, "err", S.rel(out, F.linear(x.float(), dense.float(), None if b is None else b.float())), flush=True)
