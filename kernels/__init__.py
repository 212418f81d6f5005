"""Triton kernels of sparse-llm, one file per kernel family (installed as ``sparse_llm.kernels``).

This folder imports only torch and triton; launchers and plain-torch references live in the package.
"""

if __name__ == "kernels":
    # Imported under the top-level name `kernels`: the repository root is on sys.path (`python -m ...` run from it).
    # That name belongs to Hugging Face's `kernels` package, which transformers (5.25+ requires it) imports at start;
    # this folder must not shadow it. Where that package is installed, load it in this module's place (the import
    # system hands out what sys.modules holds once this file has run); where it is not, this stays an empty module
    # without a version, which transformers takes for "not installed".
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        "kernels", [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != _root]
    )
    if _spec is not None and _spec.loader is not None:
        _module = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
