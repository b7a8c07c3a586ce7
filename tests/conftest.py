"""Shared fixtures: deterministic seeds, a CPU-sized config composer, tiny sweep files, the gpu marker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def on_tiny_disk(tmp_path: Path, script: str, then: str = "") -> Any:
    """``script`` (Python, given ``<disk>/results.sqlite`` as its argument) on a 256 KiB tmpfs mounted at
    ``tmp_path/disk`` in a private mount namespace, then the shell commands ``then`` (``{disk}`` names the
    mount); skips where root or mount namespaces are missing. Returns the finished process."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and mount namespaces to mount a tiny tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs '{disk}' && "
                           f"'{sys.executable}' -c '{script}' '{disk}/results.sqlite'"
                           + (f" && {then.format(disk=disk)}" if then else "")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    if "mount" in done.stderr and done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return done
