"""Measure ``roofline``: compulsory bytes and FLOPs against the measured matmul and copy ceilings."""

from __future__ import annotations

import math
from typing import Any

from bench.flops import flops_by_path, stage_paths
from bench.measures import JobContext, measure
from bench.roofline import measure_ceilings, min_bytes_by_path, roofline_table
from bench.row import ROOFLINE
from models.stages import FORWARD_STAGES


@measure("roofline", order=50, columns=ROOFLINE)
def measure_roofline(ctx: JobContext) -> dict[str, Any]:
    """Floors of the whole forward and the pixel decoder at the measured peaks, and the achieved fractions
    (against ``latency_ms_p50`` and the pixel decoder's time, when latency was measured in this job)."""
    model, row = ctx.model, ctx.row
    ceilings = measure_ceilings(ctx.settings.device.type, ctx.settings.precision)
    fn = ctx.runner(False, "eager")[0]
    stages = stage_paths(model)
    paths = {"total": "", "pixel_decoder": stages["pixel_decoder"]}
    by_path = flops_by_path(model, fn)
    flops = {"total": sum(by_path.get(stages[s], 0.0) for s in FORWARD_STAGES),
             "pixel_decoder": by_path.get(stages["pixel_decoder"], 0.0)}
    nbytes = min_bytes_by_path(model, paths, fn)
    pd_ms = row.get("latency_ms_pixel_decoder_alone_p50")
    if not pd_ms or math.isnan(pd_ms):
        pd_ms = row.get("latency_ms_pixel_decoder_p50", math.nan)
    table = roofline_table(flops, {k: nbytes[p] for k, p in paths.items()},
                           {"total": row.get("latency_ms_p50", math.nan), "pixel_decoder": pd_ms}, ceilings)
    out = {"peak_tflops": ceilings["peak_tflops"], "peak_gbs": ceilings["peak_gbs"]}
    for key, vals in table.items():
        out.update({f"mbytes_min_{key}": vals["mbytes_min"], f"floor_ms_{key}": vals["floor_ms"],
                    f"roofline_frac_{key}": vals["roofline_frac"]})
    return out
