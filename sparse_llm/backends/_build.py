"""Finding or building the cuSPARSELt extension (``csrc/cusparselt_linear.cpp``), lazily, on first GPU use.

Order: a module built by ``setup.py`` (``sparse_llm._cusparselt``), else a JIT build with
``torch.utils.cpp_extension.load`` into the user cache dir (about 20 s once; later imports reuse it). Header and
library come from the ``nvidia-cusparselt`` wheel installed beside torch, found through the ``nvidia`` namespace
package, never a hard-coded path. Every failure is caught and kept as a reason string: the package imports and
works without the extension, and :func:`status` says why the fast path is off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import torch

from sparse_llm.cache import cache_dir

EXTENSION_NAME = "sparse_llm_cusparselt"
SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "cusparselt_linear.cpp"
# The sparse tensor-core small-M kernel: CUDA only, no cuSPARSELt (csrc/spmm24_mma.cu).
MMA_EXTENSION_NAME = "sparse_llm_mma"
MMA_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "spmm24_mma.cu"
# The warpgroup sparse MMA kernel (wgmma.mma_async.sp + tensor-map copies): sm_90a only (csrc/spmm24_wgmma.cu).
WGMMA_EXTENSION_NAME = "sparse_llm_wgmma"
WGMMA_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "spmm24_wgmma.cu"
# wgmma and setmaxnreg exist only for the architecture-specific target; a plain sm_90 pass rejects them.
WGMMA_ARCH_FLAG = "-gencode=arch=compute_90a,code=sm_90a"
# nvcc's device optimisation (cicc) of the kernel instantiations in parallel threads, one per CPU: on 2 cores it took
# 87 of the warpgroup source's 214 s. The machine code came out the same but for 4 swapped pairs of independent
# instructions (cuobjdump -sass, sm_90a, bench/NOTES.md, fourteenth round).
NVCC_FLAGS = ["-O3", "--split-compile=0"]


def wgmma_source_tiles(macro: str) -> frozenset[tuple[int, int, int, int]]:
    """The tiles ``X(tokens, warpgroups, cluster tokens, cluster rows)`` that the ``#define`` of ``macro`` in the
    warpgroup source lists (``SPARSE_LLM_WGMMA_TILES``: the shipped ones; ``SPARSE_LLM_WGMMA_EXTRA_TILES_LIST``: those
    built only to be measured), read from its text up to the next blank line or ``#else``."""
    source = WGMMA_SOURCE.read_text()
    if f"#define {macro}" not in source:
        raise ValueError(f"{WGMMA_SOURCE} has no #define {macro}")
    listed = re.split(r"\n\n|#else", source[source.index(f"#define {macro}") :])[0]
    return frozenset(tuple(int(v) for v in t) for t in re.findall(r"X\((\d+), (\d+), (\d+), (\d+)\)", listed))


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


def _jit(name: str, source: Path, build_subdir: str, **load_kwargs) -> ModuleType:
    """Compile ``source`` with torch's cpp_extension into the user cache dir (reused by later imports)."""
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise ExtensionUnavailable("CUDA_HOME / nvcc not found: the CUDA toolkit is needed to build the extension")
    if not source.is_file():
        raise ExtensionUnavailable(f"extension source {source} is missing (non-editable install without a build)")
    build_dir = cache_dir() / "torch_extensions" / f"{build_subdir}torch{torch.__version__}-cuda{torch.version.cuda}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir):
        return cpp_extension.load(
            name=name,
            sources=[str(source)],
            build_directory=str(build_dir),
            verbose=os.environ.get("SPARSE_LLM_BUILD_VERBOSE") == "1",
            **load_kwargs,
        )


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One build at a time in ``build_dir``, under an OS file lock that dies with its process. torch's own lock
    (a ``lock`` file that its builder deletes when done) stays behind when a build is killed, and every later
    build then waits on it forever (seen on the H100 machine after a ``timeout``): holding our lock, no other
    process of this package is building here, so a ``lock`` file found now is such a leftover and is removed."""
    try:
        import fcntl
    except ImportError:  # no POSIX file locks (Windows): torch's lock alone
        yield
        return
    with open(build_dir / "sparse_llm_build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            leftover = build_dir / "lock"
            if leftover.exists():
                leftover.unlink()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _jit_build() -> ModuleType:
    include_dir, lib_dir = cusparselt_paths()
    return _jit(
        EXTENSION_NAME,
        SOURCE,
        "",
        extra_include_paths=[str(include_dir)],
        extra_cflags=["-O3"],
        extra_ldflags=[f"-L{lib_dir}", _library_flag(lib_dir), f"-Wl,-rpath,{lib_dir}"],
        with_cuda=True,
    )


def _check_sparse_tensor_cores() -> None:
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise ExtensionUnavailable(f"sparse tensor cores need compute capability 8.0+, not {major}.{minor}")


def _check_wgmma() -> None:
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        raise ExtensionUnavailable(f"wgmma.mma_async.sp needs compute capability 9.0 (sm_90a), not {major}.{minor}")


def mma_headers_flag() -> str:
    """torch rebuilds a JIT extension when its sources or flags change, not its headers: their hash as a flag."""
    headers = sorted(MMA_SOURCE.parent.glob("*.cuh"))  # the kernels, included by the extension sources
    digest = hashlib.sha256(b"".join(h.read_bytes() for h in headers)).hexdigest()[:16]
    return f"-DSPARSE_LLM_HEADERS_{digest}"


def _jit_build_mma() -> ModuleType:
    return _jit(MMA_EXTENSION_NAME, MMA_SOURCE, "mma-", extra_cuda_cflags=[*NVCC_FLAGS, mma_headers_flag()])


def _jit_build_wgmma() -> ModuleType:
    # An arch flag of our own: torch then adds none of its own (its default would be the plain sm_90 target).
    return _jit(WGMMA_EXTENSION_NAME, WGMMA_SOURCE, "wgmma-",
                extra_cuda_cflags=[*NVCC_FLAGS, WGMMA_ARCH_FLAG, mma_headers_flag()])  # fmt: skip


def _find_or_build(prebuilt: str, build, what: str, check=None) -> tuple[ModuleType | None, str]:
    """(module, how it was found) or (None, why not): the module ``setup.py`` built, else a JIT build. Every
    failure is kept as the reason string, never raised: the package works without its extensions."""
    try:
        _check_environment()
        if check is not None:
            check()
        try:
            return importlib.import_module(prebuilt), "prebuilt by setup.py"
        except ImportError:
            pass
        return build(), "built on first use"
    except ExtensionUnavailable as err:
        return None, str(err)
    except Exception as err:  # a compiler or linker failure
        return None, f"building the {what} extension failed: {type(err).__name__}: {err}"


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    return _find_or_build("sparse_llm._cusparselt", _jit_build, "cuSPARSELt")


@functools.cache
def _load_mma() -> tuple[ModuleType | None, str]:
    return _find_or_build("sparse_llm._mma", _jit_build_mma, "sparse tensor-core", _check_sparse_tensor_cores)


@functools.cache
def _load_wgmma() -> tuple[ModuleType | None, str]:
    return _find_or_build("sparse_llm._wgmma", _jit_build_wgmma, "warpgroup sparse MMA", _check_wgmma)


def _module_or_raise(loaded: tuple[ModuleType | None, str], what: str) -> ModuleType:
    module, reason = loaded
    if module is None:
        raise ExtensionUnavailable(f"{what} is off: {reason}")
    return module


def load_mma_extension() -> ModuleType:
    """The sparse tensor-core (mma.sp) kernel module; builds it on first use. Raises ExtensionUnavailable."""
    return _module_or_raise(_load_mma(), "sparse tensor-core kernel")


def load_wgmma_extension() -> ModuleType:
    """The warpgroup sparse MMA (wgmma.sp, sm_90a) kernel module; builds it on first use. Raises
    ExtensionUnavailable (any GPU other than compute capability 9.0, or no toolkit)."""
    return _module_or_raise(_load_wgmma(), "warpgroup sparse MMA kernel")


def _status(loaded: tuple[ModuleType | None, str]) -> dict:
    module, reason = loaded
    return {"available": module is not None, "reason": reason}


def wgmma_status() -> dict:
    """``{"available", "reason"}`` of the wgmma.sp kernel (builds it if possible), never raises."""
    return _status(_load_wgmma())


def mma_status() -> dict:
    """``{"available", "reason"}`` of the sparse tensor-core kernel (builds it if possible), never raises."""
    return _status(_load_mma())


def load_extension() -> ModuleType:
    """The extension module; builds it on first use. Raises ExtensionUnavailable with the reason."""
    return _module_or_raise(_load(), "cuSPARSELt fast path")


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
