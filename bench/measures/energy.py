"""Measure ``energy``: GPU board energy per image over a window (NVML counter; see ``bench.energy``)."""

from __future__ import annotations

from typing import Any

from bench import energy
from bench.measures import INVALID, JobContext, measure
from bench.row import ENERGY
from bench.timing import IterationClock, TimingConfig, shortened, warm_up


@measure("energy", order=60, columns=ENERGY, timed=True)
def measure_energy(ctx: JobContext) -> dict[str, Any]:
    """Energy per image over a window of at least ``energy.min_seconds``; NaN with the reason when NVML fails.
    After the latency measure the runner is already warm: its warm-up is shortened by ``timing.secondary``."""
    gpu = ctx.gpu
    if gpu.meter is None:
        return energy.unavailable(gpu.reason or "NVML unavailable")
    settings = ctx.settings
    run, _ = ctx.runner(False, settings.mode)
    clock = IterationClock(settings.device)
    warm_up(run, clock, energy_warmup(settings.timing, "latency" in settings.measures))
    try:
        result = gpu.meter.window(run, ctx.images.shape[0], settings.energy.min_seconds, clock.sync, gpu.idle_w)
    except energy.nvml_error(gpu.meter.nvml) as err:
        return energy.unavailable(f"NVML failed during the window: {type(err).__name__}: {err}")
    reason = result.pop("invalid_reason")
    result.pop("valid")
    result.pop("power_w_max_sampled", None)
    return {**result, "gpu_state_window": "energy", INVALID: [reason] if reason else []}


def energy_warmup(cfg: TimingConfig, runner_warm: bool) -> TimingConfig:
    """The energy window's warm-up: the full one on a cold runner, a shortened one on a runner the latency
    measure already warmed (its stability rule still applies)."""
    return shortened(cfg, cfg.secondary) if runner_warm else cfg
