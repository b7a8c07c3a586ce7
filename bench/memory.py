"""Peak memory of one forward pass, after a reset.

CUDA: ``torch.cuda`` peak allocated and reserved bytes (the caching allocator; the CUDA context is
in neither). CPU: the process's resident-set high-water mark (VmHWM) after resetting it through
``/proc/self/clear_refs``: ``mem_peak_reserved_mb`` is the peak RSS and ``mem_peak_alloc_mb`` the
peak growth over the RSS before the pass. That growth is the activations' peak (plus allocator
overhead) only on the first forward pass of a fresh process, before freed pages stay resident:
the job measures memory first. ``mem_method`` says which method was used.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MB = 1024 * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Run ``fn`` once and return the memory columns."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return {"mem_peak_alloc_mb": torch.cuda.max_memory_allocated(device) / MB,
                "mem_peak_reserved_mb": torch.cuda.max_memory_reserved(device) / MB,
                "mem_method": "cuda_caching_allocator"}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
    except (OSError, KeyError) as err:
        fn()
        return {"mem_peak_alloc_mb": math.nan, "mem_peak_reserved_mb": math.nan,
                "mem_method": f"unavailable ({type(err).__name__}: cannot reset the RSS peak)"}
    return {"mem_peak_alloc_mb": (peak - before) / 1024, "mem_peak_reserved_mb": peak / 1024,
            "mem_method": "cpu_rss_peak"}
