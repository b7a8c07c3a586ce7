"""Latency: synchronised per-iteration timing, warm-up until stable, statistics, per-stage clocks.

On CUDA each iteration is timed with a pair of CUDA events (GPU stream time) and the host clock
around a synchronisation (wall time); on CPU with ``perf_counter``. Warm-up runs until the median
of the last ``warmup_window`` iterations moves by less than ``warmup_tolerance`` against the
window before it, after at least ``warmup_min_seconds``; then at least ``min_iters`` iterations
and ``min_seconds`` are timed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class TimingConfig:
    min_iters: int = 50
    min_seconds: float = 5.0
    max_iters: int = 100_000
    warmup_min_seconds: float = 2.0
    warmup_max_seconds: float = 60.0
    warmup_window: int = 10
    warmup_tolerance: float = 0.02
    stage_iters: int = 20
    busy_iters: int = 5
    e2e: bool = True
    pixel_decoder_alone: bool = True
    secondary: float = 0.2  # share of the main loop's iterations and seconds for the alone/e2e timings
    bootstrap: int = 2000
    contention_cores: float = 0.25  # a timed loop beside this many busy cores of other work is timed again
    retime: int = 2  # at most this many times (the least contended run is kept)


def shortened(cfg: TimingConfig, share: float) -> TimingConfig:
    """``cfg`` for a secondary timing: ``share`` of the main loop's iterations (at least 3) and seconds,
    and a warm-up whose minimum and cap shrink by the same share (the cap never below the minimum)."""
    warm_min = cfg.warmup_min_seconds * share
    return dataclasses.replace(cfg, min_iters=max(round(cfg.min_iters * share), 3),
                               min_seconds=cfg.min_seconds * share, warmup_min_seconds=warm_min,
                               warmup_max_seconds=max(cfg.warmup_max_seconds * share, warm_min))


class IterationClock:
    """Times one call: (gpu_ms, wall_ms); gpu_ms is CUDA-event stream time, or wall time on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float]:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
            return ms, ms
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), (time.perf_counter() - t0) * 1e3


def is_stable(samples: list[float], window: int, tolerance: float) -> bool:
    """Median of the last ``window`` samples within ``tolerance`` (relative) of the window before."""
    if len(samples) < 2 * window:
        return False
    last = statistics.median(samples[-window:])
    prev = statistics.median(samples[-2 * window:-window])
    return abs(last - prev) <= tolerance * prev


def warm_up(fn: Callable[[], Any], clock: IterationClock, cfg: TimingConfig,
            now: Callable[[], float] = time.perf_counter) -> tuple[list[float], bool]:
    """Run until stable (and at least ``warmup_min_seconds``) or ``warmup_max_seconds``."""
    samples: list[float] = []
    start = now()
    while True:
        samples.append(clock(fn)[0])
        elapsed = now() - start
        if elapsed >= cfg.warmup_min_seconds and is_stable(samples, cfg.warmup_window, cfg.warmup_tolerance):
            return samples, True
        if elapsed >= cfg.warmup_max_seconds:
            return samples, False


def time_loop(fn: Callable[[], Any], clock: IterationClock, cfg: TimingConfig,
              now: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """At least ``min_iters`` iterations and ``min_seconds`` (at most ``max_iters``): (gpu_ms, wall_ms)."""
    gpu, wall = [], []
    clock.sync()
    start = now()
    while len(gpu) < cfg.max_iters and (len(gpu) < cfg.min_iters or now() - start < cfg.min_seconds):
        g, w = clock(fn)
        gpu.append(g)
        wall.append(w)
    return gpu, wall


def summarize(samples: list[float], batch: int, bootstrap: int = 2000, seed: int = 0) -> dict[str, float]:
    """p50/p90/p99/mean/std, the half-width of a bootstrap 95 % CI of the median, fps = batch / p50."""
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("no timing samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(x, size=(bootstrap, x.size), replace=True), axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return {"latency_ms_p50": float(p50), "latency_ms_p90": float(p90), "latency_ms_p99": float(p99),
            "latency_ms_mean": float(x.mean()), "latency_ms_std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "latency_ms_ci95": float(hi - lo) / 2, "fps": batch * 1000.0 / float(p50)}


class StageClock:
    """Per-module time of each call from forward pre/post hooks (CUDA events or perf_counter).

    Modules must not nest across names that overlap in time incorrectly; nested stages are fine.
    """

    def __init__(self, modules: Mapping[str, nn.Module], device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: dict[str, list[tuple[Any, Any]]] = {k: [] for k in modules}
        self._open: dict[str, Any] = {}
        self.handles = []
        for name, mod in modules.items():
            self.handles.append(mod.register_forward_pre_hook(self._start(name)))
            self.handles.append(mod.register_forward_hook(self._stop(name)))

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _start(self, name: str) -> Callable:
        def hook(module, args):
            self._open[name] = self._now()
        return hook

    def _stop(self, name: str) -> Callable:
        def hook(module, args, output):
            self.times[name].append((self._open.pop(name), self._now()))
        return hook

    def medians_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: statistics.median(a.elapsed_time(b) for a, b in v) for k, v in self.times.items() if v}
        return {k: statistics.median((b - a) * 1e3 for a, b in v) for k, v in self.times.items() if v}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __enter__(self) -> StageClock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def stage_latencies(fn: Callable[[], Any], modules: Mapping[str, nn.Module], device: torch.device,
                    iters: int) -> dict[str, float]:
    """Median per-stage time (ms) over ``iters`` calls of ``fn``, in a pass of its own."""
    clock = IterationClock(device)
    with StageClock(modules, device) as stages:
        for _ in range(iters):
            clock(fn)
        return stages.medians_ms()


def gpu_busy_ms(fn: Callable[[], Any], iters: int) -> float:
    """Mean summed CUDA kernel time per call, from a profiler pass (NaN without CUDA)."""
    if not torch.cuda.is_available():
        return float("nan")
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernel_us = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    if kernel_us == 0:  # kineto builds without device-side events: kernel time attributed to ops
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    return kernel_us / 1e3 / iters
