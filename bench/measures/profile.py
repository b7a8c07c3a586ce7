"""Measure ``profile``: per-layer profiler trace and tables, last (outside every timed window)."""

from __future__ import annotations

from typing import Any

from bench.measures import JobContext, measure
from bench.profile import profile_model


@measure("profile", order=90, columns=("artifacts",), timed=True)
def measure_profile(ctx: JobContext) -> dict[str, Any]:
    s = ctx.settings
    return {"artifacts": profile_model(ctx.model, ctx.runner(True, "eager")[0], ctx.out_dir, s.profile.warmup,
                                       s.profile.active, s.device, s.precision)}
