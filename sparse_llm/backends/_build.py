"""Finding or building the cuSPARSELt extension (``csrc/cusparselt_linear.cpp``), lazily, on first GPU use.

Order: a module built by ``setup.py`` (``sparse_llm._cusparselt``), else a JIT build with
``torch.utils.cpp_extension.load`` into the user cache dir (about 20 s once; later imports reuse it). Header and
library come from the ``nvidia-cusparselt`` wheel installed beside torch, found through the ``nvidia`` namespace
package, never a hard-coded path. Every failure is caught and kept as a reason string: the package imports and
works without the extension, and :func:`status` says why the fast path is off.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import torch

from sparse_llm.cache import cache_dir

EXTENSION_NAME = "sparse_llm_cusparselt"
SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "cusparselt_linear.cpp"
# The sparse tensor-core small-M kernel: CUDA only, no cuSPARSELt (csrc/spmm24_mma.cu).
MMA_EXTENSION_NAME = "sparse_llm_mma"
MMA_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "spmm24_mma.cu"


class ExtensionUnavailable(RuntimeError):
    """The cuSPARSELt extension cannot be used here; the message says why."""


def cusparselt_paths() -> tuple[Path, Path]:
    """(include dir, lib dir) of the ``nvidia-cusparselt`` wheel; ExtensionUnavailable if it is not installed."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("nvidia.cusparselt") if importlib.util.find_spec("nvidia") else None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    nvidia_spec = importlib.util.find_spec("nvidia")
    if nvidia_spec is not None and nvidia_spec.submodule_search_locations:
        candidates += [Path(p) / "cusparselt" for p in nvidia_spec.submodule_search_locations]
    for root in candidates:
        header = next(iter(sorted(root.glob("**/cusparseLt.h"))), None)
        library = next(iter(sorted(root.glob("**/libcusparseLt.so*"))), None)
        if header is not None and library is not None:
            return header.parent, library.parent
    raise ExtensionUnavailable(
        "the nvidia-cusparselt wheel (cusparseLt.h + libcusparseLt.so) was not found beside torch "
        "(pip install nvidia-cusparselt-cu12 or -cu13 to match torch.version.cuda)"
    )


def _library_flag(lib_dir: Path) -> str:
    # The wheel ships only the versioned name (libcusparseLt.so.0), which plain -lcusparseLt does not find.
    names = sorted(p.name for p in lib_dir.glob("libcusparseLt.so*"))
    return "-lcusparseLt" if "libcusparseLt.so" in names else f"-l:{names[0]}"


def _check_environment() -> None:
    if torch.version.cuda is None:
        raise ExtensionUnavailable(f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise ExtensionUnavailable("no CUDA device is visible")


def _jit_build() -> ModuleType:
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise ExtensionUnavailable("CUDA_HOME / nvcc not found: the CUDA toolkit is needed to build the extension")
    if not SOURCE.is_file():
        raise ExtensionUnavailable(f"extension source {SOURCE} is missing (non-editable install without a build)")
    include_dir, lib_dir = cusparselt_paths()
    build_dir = cache_dir() / "torch_extensions" / f"torch{torch.__version__}-cuda{torch.version.cuda}"
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(SOURCE)],
        extra_include_paths=[str(include_dir)],
        extra_cflags=["-O3"],
        extra_ldflags=[f"-L{lib_dir}", _library_flag(lib_dir), f"-Wl,-rpath,{lib_dir}"],
        build_directory=str(build_dir),
        with_cuda=True,
        verbose=os.environ.get("SPARSE_LLM_BUILD_VERBOSE") == "1",
    )


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        _check_environment()
        try:
            return importlib.import_module("sparse_llm._cusparselt"), "prebuilt by setup.py"
        except ImportError:
            pass
        return _jit_build(), "built on first use"
    except ExtensionUnavailable as err:
        return None, str(err)
    except Exception as err:  # a compiler or linker failure: keep the reason, never break the import
        return None, f"building the cuSPARSELt extension failed: {type(err).__name__}: {err}"


def _jit_build_mma() -> ModuleType:
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise ExtensionUnavailable("CUDA_HOME / nvcc not found: the CUDA toolkit is needed to build the extension")
    if not MMA_SOURCE.is_file():
        raise ExtensionUnavailable(f"extension source {MMA_SOURCE} is missing (non-editable install without a build)")
    build_dir = cache_dir() / "torch_extensions" / f"mma-torch{torch.__version__}-cuda{torch.version.cuda}"
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=MMA_EXTENSION_NAME,
        sources=[str(MMA_SOURCE)],
        extra_cuda_cflags=["-O3"],
        build_directory=str(build_dir),
        verbose=os.environ.get("SPARSE_LLM_BUILD_VERBOSE") == "1",
    )


@functools.cache
def _load_mma() -> tuple[ModuleType | None, str]:
    try:
        _check_environment()
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            raise ExtensionUnavailable(f"sparse tensor cores need compute capability 8.0+, not {major}.{minor}")
        try:
            return importlib.import_module("sparse_llm._mma"), "prebuilt by setup.py"
        except ImportError:
            pass
        return _jit_build_mma(), "built on first use"
    except ExtensionUnavailable as err:
        return None, str(err)
    except Exception as err:  # a compiler failure: keep the reason, never break the import
        return None, f"building the sparse tensor-core extension failed: {type(err).__name__}: {err}"


def load_mma_extension() -> ModuleType:
    """The sparse tensor-core (mma.sp) kernel module; builds it on first use. Raises ExtensionUnavailable."""
    module, reason = _load_mma()
    if module is None:
        raise ExtensionUnavailable(f"sparse tensor-core kernel is off: {reason}")
    return module


def mma_status() -> dict:
    """``{"available", "reason"}`` of the sparse tensor-core kernel (builds it if possible), never raises."""
    module, reason = _load_mma()
    return {"available": module is not None, "reason": reason}


def load_extension() -> ModuleType:
    """The extension module; builds it on first use. Raises ExtensionUnavailable with the reason."""
    module, reason = _load()
    if module is None:
        raise ExtensionUnavailable(f"cuSPARSELt fast path is off: {reason}")
    return module


def extension_status() -> dict:
    """``{"available", "reason", "cusparselt_version"}`` without raising (builds the extension if possible)."""
    module, reason = _load()
    info = {"available": module is not None, "reason": reason, "cusparselt_version": None}
    if module is not None:
        try:
            info["cusparselt_version"] = int(module.version())
        except RuntimeError as err:
            info["available"], info["reason"] = False, f"cuSPARSELt failed to initialise: {err}"
    return info
