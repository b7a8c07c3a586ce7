"""Peak memory of one forward pass, after a reset.

CUDA: ``torch.cuda`` peak allocated and reserved bytes (the caching allocator; the CUDA context is
in neither). CPU: ``mem_peak_alloc_mb`` is the peak of the bytes held by tensors allocated during
the pass, from the profiler's memory events (every CPU allocation and free, with its size, in
order): the running total's maximum. It counts what the model allocates, not what the allocator
keeps resident, so it repeats exactly for one configuration. ``mem_peak_reserved_mb`` is the
process's resident-set high-water mark (VmHWM, reset through ``/proc/self/clear_refs``), which
depends on the allocator and on what ran before. ``mem_method`` says which method was used.
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
        rss = True
    except OSError:
        rss = False
    tensors = tensor_peak_bytes(fn)
    try:
        peak_rss = _status_kb("VmHWM") / 1024 if rss else math.nan
    except (OSError, KeyError):
        peak_rss = math.nan
    return {"mem_peak_alloc_mb": tensors / MB, "mem_peak_reserved_mb": peak_rss,
            "mem_method": "cpu_profiler_tensors" + ("+rss_peak" if peak_rss == peak_rss else "")}


def tensor_peak_bytes(fn: Callable[[], Any]) -> int:
    """Run ``fn`` under the profiler's memory tracking; the peak of CPU bytes allocated during it and not
    yet freed (frees of earlier tensors count too, so the total may dip below zero; the peak is >= 0)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak
