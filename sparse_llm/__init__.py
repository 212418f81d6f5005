"""sparse-llm: prune Hugging Face causal LMs to 2:4 and run them on sparse tensor cores."""

from sparse_llm import data
from sparse_llm.checkpoint import load_sparse, save_sparse
from sparse_llm.eval import perplexity
from sparse_llm.format import Sparse24Weight
from sparse_llm.masks import nm_mask, row_topk_mask
from sparse_llm.models import load_default_model, load_model
from sparse_llm.nn import SparseLinear
from sparse_llm.prune import prune
from sparse_llm.sparsify import sparsify, unsparsify

__version__ = "0.1.0"

__all__ = [
    "Sparse24Weight",
    "SparseLinear",
    "data",
    "load_default_model",
    "load_model",
    "load_sparse",
    "nm_mask",
    "perplexity",
    "prune",
    "row_topk_mask",
    "save_sparse",
    "sparsify",
    "unsparsify",
]
