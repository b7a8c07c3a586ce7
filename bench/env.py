"""Environment captured in every row: software versions, CPU, GPU, driver, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """HEAD of the repository, with ``+dirty`` when tracked files differ; None outside a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture(device: torch.device, nvml: Any | None = None, handle: Any = None) -> dict[str, Any]:
    """Environment columns; GPU columns from torch and (when given) NVML's ``handle`` of that GPU. The GPU
    state columns hold one reading here; a timed window replaces them with what it sampled."""
    import transformers

    env: dict[str, Any] = {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
                           "transformers_version": transformers.__version__, "cpu_name": cpu_name(),
                           "num_threads": torch.get_num_threads(), "git_commit": git_commit()}
    from bench.energy import NVML_CLOCK_SM, NVML_TEMPERATURE_GPU, cuda_uuid, nvml_text

    if device.type == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name(device)
        env["gpu_uuid"] = cuda_uuid(device)
    if nvml is not None and handle is not None:
        try:
            env["driver"] = nvml_text(nvml.nvmlSystemGetDriverVersion())
            env["temp_c_start"] = nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU)
            env["sm_clock_mhz_min"] = env["sm_clock_mhz_max"] = nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM)
            env["gpu_state_window"] = "one reading at job start"
        except Exception as err:  # record, never fail the job for environment capture
            env["driver"] = f"unreadable: {err}"
    env["hostname"] = os.uname().nodename
    return env
