"""sparse-llm: prune Hugging Face causal LMs to 2:4 and run them on sparse tensor cores."""

from sparse_llm.checkpoint import load_sparse, save_sparse
from sparse_llm.format import Sparse24Weight
from sparse_llm.masks import nm_mask, row_topk_mask
from sparse_llm.nn import SparseLinear
from sparse_llm.sparsify import sparsify, unsparsify

__version__ = "0.1.0"

__all__ = [
    "Sparse24Weight",
    "SparseLinear",
    "nm_mask",
    "row_topk_mask",
    "load_sparse",
    "save_sparse",
    "sparsify",
    "unsparsify",
]
