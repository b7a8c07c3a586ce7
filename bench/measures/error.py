"""Measure ``error``: the output error of the job's precision against fp32, same weights and input."""

from __future__ import annotations

from typing import Any

from bench.measures import JobContext, measure
from bench.precision import output_error
from bench.row import ACCURACY
from bench.runners import precision_context


@measure("error", order=30, columns=ACCURACY)
def measure_error(ctx: JobContext) -> dict[str, Any]:
    """Switches the TF32 flags for its fp32 reference, then restores the job's."""
    return output_error(ctx.model, ctx.images, ctx.settings.precision, precision_context)
