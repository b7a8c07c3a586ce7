"""Shared fixtures: deterministic seeds, a CPU-sized config composer, the gpu marker."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # the triton MSDA backend runs in Triton's CPU interpreter (tests only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.config import compose  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def small_cfg():
    """Compose a config with a small input unless the caller overrides it."""

    def make(*overrides: str):
        return compose(["input.height=256", "input.width=384", *overrides])

    return make


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
