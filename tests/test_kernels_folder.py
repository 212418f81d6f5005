"""The top-level ``kernels/`` folder is installed as ``sparse_llm.kernels``; run from the repository root (which puts
the root on sys.path) it must not take the top-level name ``kernels`` from Hugging Face's package, which transformers
5.25+ requires and imports when it starts."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_transformers_imports_from_the_repository_root():
    done = _run_from_root("from transformers import LlamaConfig, LlamaForCausalLM; import sparse_llm")
    assert done.returncode == 0, done.stderr[-2000:]


def test_import_kernels_from_the_root_is_hugging_faces_package_where_installed():
    done = _run_from_root("import kernels; print(kernels.__file__, getattr(kernels, '__version__', 'N/A'))")
    assert done.returncode == 0, done.stderr[-2000:]
    where, version = done.stdout.split()
    if _hf_kernels_installed():
        assert Path(where).resolve().parent != ROOT / "kernels"
    else:  # our folder's empty module, without a version: transformers takes it for "not installed"
        assert Path(where).resolve() == ROOT / "kernels" / "__init__.py" and version == "N/A"


def test_the_package_still_gets_its_own_kernels():
    done = _run_from_root("import sparse_llm.kernels.nm_mask as m; print(m.__file__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).resolve() == ROOT / "kernels" / "nm_mask.py"
