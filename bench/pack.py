"""How fast is 2:4 packing? Our Triton packer vs PyTorch's `to_sparse_semi_structured` vs our torch reference.

Shapes: the largest Llama linears (Llama-2-70B / Llama-3-70B up and gate: 28672x8192) and a Llama-2-7B MLP.
Also the memory floor: bytes that must move (read W, write values + meta) over the copy bandwidth measured in the
same run. Usage: python bench/pack.py --out DIR
"""

from __future__ import annotations

import argparse

import torch
import triton.testing
from common import copy_bandwidth, write_result

from sparse_llm import Sparse24Weight, nm_mask
from sparse_llm.format import pack_2to4_reference
from sparse_llm.ops.pack import pack_2to4_triton

SHAPES = {
    "llama2-70b.up_proj": (28672, 8192),
    "llama2-7b.up_proj": (11008, 4096),
    "llama2-7b.q_proj": (4096, 4096),
}


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def to_semi_structured(w: torch.Tensor):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    # The CUTLASS kernels refuse sm90: use the cuSPARSELt path there (DESIGN.md).
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return to_sparse_semi_structured(w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        w = w * nm_mask(w.abs())
        values, meta = pack_2to4_triton(w)
        ref_values, ref_meta = pack_2to4_reference(w)
        exact = torch.equal(values.view(torch.int16), ref_values.view(torch.int16)) and torch.equal(meta, ref_meta)
        assert exact, f"{name}: Triton packer differs from the reference"
        assert torch.equal(Sparse24Weight(values, meta).to_dense(), w)
        floor_ms = (w.numel() * 2 + values.numel() * 2 + meta.numel() * 2) / bandwidth * 1e3
        ours = bench(lambda w=w: Sparse24Weight.from_dense(w))
        reference = bench(lambda w=w: pack_2to4_reference(w))
        try:
            torch_ms, torch_note = bench(lambda w=w: to_semi_structured(w)), ""
        except (RuntimeError, ValueError) as err:
            torch_ms, torch_note = None, str(err).splitlines()[0]
        row = {
            "shape": name,
            "n": n,
            "k": k,
            "dtype": "bfloat16",
            "ours_ms": ours,
            "torch_reference_ms": reference,
            "to_sparse_semi_structured_ms": torch_ms,
            "to_sparse_semi_structured_note": torch_note,
            "memory_floor_ms": floor_ms,
            "ours_fraction_of_floor": floor_ms / ours,
            "speedup_vs_to_sparse_semi_structured": torch_ms / ours if torch_ms else None,
            "bit_exact_vs_reference": exact,
        }
        rows.append(row)
        print(
            f"{name:22s} ours {ours:7.3f} ms  to_sparse_semi_structured {torch_ms or float('nan'):7.3f} ms  "
            f"torch ref {reference:7.3f} ms  floor {floor_ms:6.3f} ms ({floor_ms / ours:.0%} of floor)"
        )
    path = write_result(args.out, "pack", {"copy_bandwidth_GBps": bandwidth / 1e9, "rows": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
