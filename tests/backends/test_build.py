"""Building the extensions on first use (``sparse_llm.backends._build``), without a compiler: torch's ``load`` is
replaced by a recorder, so what is checked is what happens around it."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from sparse_llm.backends import _build


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """``SPARSE_LLM_CACHE`` in tmp_path, a CUDA_HOME, a source file, and a ``load`` that records what it saw."""
    monkeypatch.setenv("SPARSE_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    source = tmp_path / "kernel.cu"
    source.write_text("// kernel\n")
    seen = {}

    def load(name, sources, build_directory, **kwargs):
        build = Path(build_directory)
        seen["leftover_lock"] = (build / "lock").exists()
        with open(build / "sparse_llm_build.lock") as other:  # another process trying to build now must wait
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["lock_free"] = True
            except BlockingIOError:
                seen["lock_free"] = False
        seen["name"], seen["sources"], seen["kwargs"] = name, sources, kwargs
        return "module"

    monkeypatch.setattr(cpp_extension, "load", load)
    return source, seen


def _build_dir(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "cache" / "torch_extensions").iterdir()
    return found


def test_a_killed_builds_lock_is_removed_before_building(fake_build, tmp_path):
    source, seen = fake_build
    _build._jit("ext", source, "x-", extra_cuda_cflags=["-O3"])  # creates the build directory
    (_build_dir(tmp_path) / "lock").write_text("")  # what torch leaves when its build is killed
    assert _build._jit("ext", source, "x-", extra_cuda_cflags=["-O3"]) == "module"
    assert seen["leftover_lock"] is False
    assert seen["lock_free"] is False  # our lock is held for the whole build
    assert seen["name"] == "ext" and seen["sources"] == [str(source)]
    assert seen["kwargs"]["extra_cuda_cflags"] == ["-O3"]


def test_the_lock_is_released_after_a_failed_build(fake_build, tmp_path, monkeypatch):
    source, _ = fake_build

    def broken(**kwargs):
        raise RuntimeError("nvcc failed")

    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: broken())
    with pytest.raises(RuntimeError, match="nvcc failed"):
        _build._jit("ext", source, "x-")
    with open(_build_dir(tmp_path) / "sparse_llm_build.lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held


def test_missing_source_and_missing_toolkit_say_so(fake_build, tmp_path, monkeypatch):
    source, _ = fake_build
    with pytest.raises(_build.ExtensionUnavailable, match="missing"):
        _build._jit("ext", tmp_path / "nope.cu", "x-")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(_build.ExtensionUnavailable, match="nvcc not found"):
        _build._jit("ext", source, "x-")


@pytest.mark.parametrize("only, ok", [("_wgmma", True), ("_mma, _cusparselt", True), ("_wgmmx", False)])
def test_setup_builds_only_the_extensions_asked_for(only, ok):
    """``SPARSE_LLM_BUILD_ONLY`` names extensions of setup.py; a name that is none of them stops it with the list."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SPARSE_LLM_BUILD_ONLY": only, "SPARSE_LLM_BUILD_EXTENSIONS": "0"}
    done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert (done.returncode == 0) == ok, done.stderr[-500:]
    if not ok:
        assert "SPARSE_LLM_BUILD_ONLY names ['_wgmmx']" in done.stderr and "'_wgmma'" in done.stderr
