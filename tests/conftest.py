"""Shared fixtures: a fixed seed for every test, GPU tests skipped without CUDA, devices to parametrize over."""

import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    return 0


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def devices() -> list:
    """CPU always; CUDA (marked gpu) when present."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def random_2to4(n: int, k: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A random (n, k) weight with exactly the 2:4 pattern of its largest magnitudes (some groups emptier)."""
    from sparse_llm.masks import nm_mask

    w = torch.randn(n, k, device=device).to(dtype)
    w = w * nm_mask(w.float().abs())
    # Groups with one or zero non-zeros exercise the format's filler rule.
    w[:, :4][torch.rand(n, device=device) < 0.3] = 0
    w.view(n, k // 4, 4)[:, 1, :2] = 0
    return w
