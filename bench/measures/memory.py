"""Measure ``memory``: peak memory of one inference (forward + post-processing), first in the job."""

from __future__ import annotations

from typing import Any

from bench.measures import JobContext, measure
from bench.memory import peak_memory
from bench.row import MEMORY


@measure("memory", order=10, columns=MEMORY)
def measure_memory(ctx: JobContext) -> dict[str, Any]:
    """The peak over one inference. On CPU with ``flops`` the FLOP-counting forward carries the probe
    (it is the process's first forward, and the counters hold no tensors), so nothing runs here."""
    if ctx.cpu_probe_shared:
        return {}
    return peak_memory(ctx.runner(True, "eager")[0], ctx.settings.device)
