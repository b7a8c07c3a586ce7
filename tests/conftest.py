"""Shared fixtures: deterministic seeds, a CPU-sized config composer, tiny sweep files, the gpu marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the triton MSDA backend runs in Triton's CPU interpreter (tests only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.config import compose  # noqa: E402

TINY_SWEEP = """
defaults:
  - config
  - _self_
sweep: tiny
measure: {measure}
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      backbone: r50
      input: ade20k
      input.height: 64
      input.width: 64
      encoder: {encoders}
"""


SLOW_TIMING = """
timing:
  min_seconds: 4.0
  warmup_min_seconds: 0.5
  e2e: false
  pixel_decoder_alone: false
"""


def write_tiny_sweep(folder: Path, encoders: str = "m2f", measure: str = "memory", slow: bool = False) -> str:
    """A sweep file of R50 64x64 jobs (one per encoder) in ``folder``; its path. ``slow``: each job also
    times the model for about 5 s, so that a test can stop it while it runs."""
    path = Path(folder) / "tiny.yaml"
    text = TINY_SWEEP.format(encoders=encoders, measure="[memory, latency]" if slow else measure)
    path.write_text(text.replace("hydra:", SLOW_TIMING.strip() + "\nhydra:") if slow else text)
    return str(path)


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
