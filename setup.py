"""Build script: maps the top-level ``kernels/`` folder to ``sparse_llm.kernels``.

The folder is not installed as a top-level ``kernels`` module: that name belongs to Hugging Face's
``kernels`` package, which transformers probes for.

When torch with CUDA and the CUDA toolkit (nvcc) are importable at build time (``pip install
--no-build-isolation``), the extensions in ``csrc/`` are built: ``sparse_llm._mma`` (the sparse tensor-core small-M
kernel), ``sparse_llm._wgmma`` (the warpgroup sparse MMA kernel, sm_90a) and, where the ``nvidia-cusparselt`` wheel
is installed, ``sparse_llm._cusparselt``. Otherwise, or if a
build fails, it is skipped and the package builds it lazily on first GPU use (``sparse_llm/backends/_build.py``).
``SPARSE_LLM_BUILD_EXTENSIONS=0`` skips the build too: an install in seconds, the extensions built on first use, or
taken from ``sparse_llm/_*.so`` where an earlier editable install left them (nothing checks that those were built
from the present ``csrc/``: use it only where they were). ``SPARSE_LLM_BUILD_ONLY=_wgmma`` (a comma-separated list
of ``_mma``, ``_wgmma``, ``_cusparselt``) builds only those, e.g. after a change to one source.
"""

import glob
import importlib.util
import os

from setuptools import find_packages, setup

PACKAGES = ["sparse_llm", "sparse_llm.kernels"] + [f"sparse_llm.{p}" for p in find_packages("sparse_llm")]
EXTENSIONS = {"_mma", "_wgmma", "_cusparselt"}  # sparse_llm.<name>, what SPARSE_LLM_BUILD_ONLY may name


def _cuda_extensions() -> dict:
    """setup() arguments that build the extensions, or {} where they cannot be built here."""
    only = [name.strip() for name in os.environ.get("SPARSE_LLM_BUILD_ONLY", "").split(",") if name.strip()]
    if set(only) - EXTENSIONS:
        raise SystemExit(f"SPARSE_LLM_BUILD_ONLY names {sorted(set(only) - EXTENSIONS)}: the extensions are "
                         f"{sorted(EXTENSIONS)}")  # fmt: skip
    if os.environ.get("SPARSE_LLM_BUILD_EXTENSIONS", "1") == "0":
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return {}
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
        return {}

    class OptionalBuild(cpp_extension.BuildExtension):
        def build_extension(self, ext):  # a failed build must not fail the install: the lazy build remains
            try:
                super().build_extension(ext)
            except Exception as err:
                print(f"sparse-llm: skipping {ext.name} ({type(err).__name__}: {err})")

    nvcc = ["-O3", "--split-compile=0"]  # the flags of sparse_llm/backends/_build.py (NVCC_FLAGS) say why
    extensions = [
        cpp_extension.CUDAExtension(
            "sparse_llm._mma",
            ["csrc/spmm24_mma.cu"],
            depends=sorted(glob.glob("csrc/spmm24_mma_*.cuh")),
            extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc},
        ),
        # wgmma.mma_async.sp and setmaxnreg exist only for the sm_90a target (H100/H200); the arch flag given here
        # replaces torch's own (a plain sm_90 pass rejects them)
        cpp_extension.CUDAExtension(
            "sparse_llm._wgmma",
            ["csrc/spmm24_wgmma.cu"],
            depends=sorted(glob.glob("csrc/*.cuh")),
            extra_compile_args={"cxx": ["-O3"], "nvcc": [*nvcc, "-gencode=arch=compute_90a,code=sm_90a"]},
        ),
    ]
    cusparselt = _cusparselt_extension()
    if cusparselt is not None:
        extensions.append(cusparselt)
    if only:
        extensions = [e for e in extensions if e.name.split(".")[-1] in only]
    return {"ext_modules": extensions, "cmdclass": {"build_ext": OptionalBuild}}


def _cusparselt_extension():
    """The cuSPARSELt extension, or None where the nvidia-cusparselt wheel is not installed."""
    from torch.utils import cpp_extension

    nvidia = importlib.util.find_spec("nvidia")
    roots = [os.path.join(p, "cusparselt") for p in (nvidia.submodule_search_locations if nvidia else [])]
    headers = [h for r in roots for h in glob.glob(os.path.join(r, "**", "cusparseLt.h"), recursive=True)]
    libraries = [lib for r in roots for lib in glob.glob(os.path.join(r, "**", "libcusparseLt.so*"), recursive=True)]
    if not headers or not libraries:
        return None
    lib_dir = os.path.dirname(sorted(libraries)[0])
    names = sorted(os.path.basename(p) for p in libraries)
    link = "-lcusparseLt" if "libcusparseLt.so" in names else f"-l:{names[0]}"
    return cpp_extension.CUDAExtension(
        "sparse_llm._cusparselt",
        ["csrc/cusparselt_linear.cpp"],
        include_dirs=[os.path.dirname(headers[0])],
        extra_compile_args={"cxx": ["-O3"]},
        extra_link_args=[f"-L{lib_dir}", link, f"-Wl,-rpath,{lib_dir}"],
    )


setup(
    packages=PACKAGES,
    package_dir={"sparse_llm": "sparse_llm", "sparse_llm.kernels": "kernels"},
    package_data={"sparse_llm": ["tables/*.json"]},  # the tuning tables measured here (sparse_llm.tune.shipped_table)
    **_cuda_extensions(),
)
