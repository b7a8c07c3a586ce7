"""Measure ``latency``: the synchronised timed loop, per-stage times, the pixel decoder alone, end to end."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from bench.contention import quiet_loop, worst
from bench.energy import EnergyMeter, sampled_state
from bench.measures import INVALID, JobContext, measure
from bench.row import SPEED, TIMED_STAGES
from bench.runners import Runner, dynamo_graph_breaks, dynamo_graphs, pixel_decoder_runner
from bench.timing import (
    IterationClock,
    TimingConfig,
    gpu_busy_ms,
    shortened,
    stage_latencies,
    summarize,
    time_loop,
    warm_up,
)


@measure("latency", order=40, columns=SPEED, timed=True)
def measure_latency(ctx: JobContext) -> dict[str, Any]:
    """The timed loop (and, with a GPU meter, the GPU state sampled over it), stage times, secondary timings.
    Graph breaks are counted from here (dynamo's counter is process-wide and survives resets)."""
    return latency_columns(ctx.model, ctx.images, ctx.settings, ctx.runner, ctx.gpu.meter)


def latency_columns(model: torch.nn.Module | None, images: torch.Tensor, settings: Any, runner: Runner,
                    meter: EnergyMeter | None = None) -> dict[str, Any]:
    """The latency columns (``settings`` needs ``timing``, ``device`` and ``mode``)."""
    cfg: TimingConfig = settings["timing"]
    device, mode = settings["device"], settings["mode"]
    row: dict[str, Any] = {}
    breaks = dynamo_graph_breaks()
    run, info = runner(False, mode)
    row.update(info)
    clock = IterationClock(device)
    warm, stable = warm_up(run, clock, cfg)
    graphs = dynamo_graphs()
    with sampled_state(meter, row, "latency"):  # a loop timed beside other work is timed again
        (gpu, wall), cpu, retimed = quiet_loop(lambda: time_loop(run, clock, cfg), cfg.contention_cores,
                                               cfg.retime)
    windows = [cpu]  # what else used the CPU while each timed loop ran
    row.update(summarize(gpu, images.shape[0], cfg.bootstrap))
    row.update(wall_ms_p50=float(torch.tensor(wall).median()), timing_iters=len(gpu),
               timing_seconds=sum(wall) / 1e3, warmup_iters=len(warm), warmup_stable=stable)
    if mode == "compile":
        row["recompiles"] = dynamo_graphs() - graphs
        row["graph_breaks"] = dynamo_graph_breaks() - breaks
    if mode == "eager":
        stages = {s: m for s, m in model.stage_modules().items() if s in TIMED_STAGES}
        per_stage = stage_latencies(runner(True, "eager")[0], stages, device, cfg.stage_iters)
        row.update({f"latency_ms_{s}_p50": v for s, v in per_stage.items()})
    row["gpu_busy_ms"] = gpu_busy_ms(run, cfg.busy_iters) if device.type == "cuda" else math.nan
    if cfg.pixel_decoder_alone:
        alone, alone_info = pixel_decoder_runner(model, images, settings)
        if "compile_seconds" in alone_info:
            row["compile_seconds"] += alone_info["compile_seconds"]
        samples, cpu_alone, again = quiet_loop(lambda: _short_loop(alone, clock, cfg), cfg.contention_cores,
                                               cfg.retime)
        stats = summarize(samples, images.shape[0], cfg.bootstrap)
        windows.append(cpu_alone)
        retimed += again
        row["latency_ms_pixel_decoder_alone_p50"] = stats["latency_ms_p50"]
        row["latency_ms_pixel_decoder_alone_ci95"] = stats["latency_ms_ci95"]
    if cfg.e2e and mode != "cudagraph":
        e2e, _ = runner(True, mode)
        row["latency_ms_e2e_p50"] = summarize(_short_loop(e2e, clock, cfg), images.shape[0])["latency_ms_p50"]
    row.update(worst(windows), retimed=retimed)
    row[INVALID] = row.pop("invalid", [])
    return row


def _short_loop(run: Callable[[], Any], clock: IterationClock, cfg: TimingConfig) -> list[float]:
    """A secondary timing (``timing.secondary`` of the main loop's iterations and seconds, at least 3
    iterations) after a warm-up (minimum and cap) shortened by the same share."""
    short = shortened(cfg, cfg.secondary)
    warm_up(run, clock, short)
    return time_loop(run, clock, short)[0]
