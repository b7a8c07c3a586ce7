"""Measure ``flops``: the three FLOP counters per stage (see ``bench.flops``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.flops import FlopCache, count_flops
from bench.measures import JobContext, measure
from bench.memory import peak_memory
from bench.row import FLOPS


@measure("flops", order=20, columns=FLOPS)
def measure_flops(ctx: JobContext) -> dict[str, Any]:
    """One counting forward (with the CPU memory probe around it when memory is measured too)."""
    fs, device = ctx.settings.flops, ctx.settings.device
    cache = FlopCache(fs.cache_dir) if fs.cache_dir else None
    probe = (lambda fn: peak_memory(fn, device)) if ctx.cpu_probe_shared else None
    return count_flops(ctx.model, ctx.images, fs.count_attention, cache, stage_keys(ctx.cfg), probe)


def stage_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What each stage's FLOPs depend on besides its input shapes (the FLOP cache keys)."""
    inp = cfg["input"]
    post = {k: inp.get(k) for k in ("num_classes", "tasks", "thing_ids", "topk_per_image")}
    return {"backbone": cfg["backbone"], "pixel_decoder": [cfg["encoder"], cfg["backbone"]["name"]],
            "transformer_decoder": cfg["decoder"], "postprocess": post}
