import faulthandler
import sys

import torch

faulthandler.enable()
from sparse_llm.backends._build import load_extension
from sparse_llm.backends.cusparselt import compress_values
from sparse_llm.format import pack_2to4_reference

ext = load_extension()
step = sys.argv[1]
torch.manual_seed(0)
def w24(n, k):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    keep = torch.rand(n, k // 4, 4, device="cuda").argsort(-1) < 2
    return w * keep.reshape(n, k)
if step == "fill":
    w = torch.zeros(32, 64, dtype=torch.bfloat16, device="cuda")
    for j,(a,b) in enumerate([(0,0),(1,0),(2,0),(3,0),(0,1),(3,1)]): w[0,4*j+a]=1+j
    v,m = pack_2to4_reference(w); c = ext.compress(w)
    print("ours", v[0,:12].tolist()); print("cslt", c[:12].tolist(), flush=True)
if step in ("torch", "nosearch", "search"):
    n, k = 256, 512
    w = w24(n, k); v, m = pack_2to4_reference(w)
    c, m2 = compress_values(v, m)
    print("compressed", c.numel(), n*k*9//16, flush=True)
    for M in (16, 1, 100, 4096):
        x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w.float().t()
        if step == "torch":
            y = torch._cslt_sparse_mm(c, x.t(), transpose_result=True).t()  if M % 16 == 0 else None
        else:
            y = ext.linear(x, c, None, n, k)
        torch.cuda.synchronize()
        if y is not None: print(step, M, ((y.float()-ref).norm()/ref.norm()).item(), ext.cache_info(), flush=True)
