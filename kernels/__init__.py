"""Triton kernels of sparse-llm, one file per kernel family (installed as ``sparse_llm.kernels``).

This folder imports only torch and triton; launchers and plain-torch references live in the package.
"""
