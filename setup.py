"""Build script: maps the top-level ``kernels/`` folder to ``sparse_llm.kernels``.

The folder is not installed as a top-level ``kernels`` module: that name belongs to Hugging Face's
``kernels`` package, which transformers probes for.
"""

from setuptools import find_packages, setup

PACKAGES = ["sparse_llm", "sparse_llm.kernels"] + [f"sparse_llm.{p}" for p in find_packages("sparse_llm")]

setup(
    packages=PACKAGES,
    package_dir={"sparse_llm": "sparse_llm", "sparse_llm.kernels": "kernels"},
)
