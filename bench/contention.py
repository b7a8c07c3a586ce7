"""What else used the CPU while a window was timed: the machine-wide busy time from ``/proc/stat`` less
this process's own CPU time (``os.times``), and the hypervisor's steal time.

``cpu_others_cores`` is the average number of cores that other processes kept busy during the window
(0 on an idle machine; 1 when another program spins one core); ``cpu_steal_frac`` the share of the
machine's time a hypervisor gave to other guests. Without ``/proc/stat`` (not Linux) both are NaN.
A timed loop that shared the CPU with ``timing.contention_cores`` cores' worth of other work or more is
run again (``timing.retime`` times at most) and the least contended run is kept; a row keeps the worst
of its timed loops' windows and counts the re-timed loops in ``retimed``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PROC_STAT = Path("/proc/stat")
COLUMNS = ("cpu_others_cores", "cpu_steal_frac")


def machine_jiffies() -> tuple[int, int, int] | None:
    """(busy, total, steal) jiffies of all CPUs since boot, or None without ``/proc/stat``."""
    try:
        first = PROC_STAT.read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal, steal


def own_seconds() -> float:
    """This process's CPU time (user + system, every thread)."""
    t = os.times()
    return t.user + t.system


def quiet_loop(loop: Callable[[], T], cores: float, retries: int) -> tuple[T, CpuWindow, int]:
    """Run ``loop`` (a timed loop) in a window; while other processes kept ``cores`` cores or more busy, run
    it again, at most ``retries`` more times. Returns the least contended result, its window, and how many
    times the loop was re-timed."""
    best: tuple[float, T, CpuWindow] | None = None
    tries = 0
    for tries in range(retries + 1):  # noqa: B007 - the count is returned
        with CpuWindow() as window:
            result = loop()
        others = window.columns()["cpu_others_cores"]
        others = 0.0 if others != others else others  # unknown (no /proc/stat): nothing to re-time for
        if best is None or others < best[0]:
            best = (others, result, window)
        if others < cores:
            break
    return best[1], best[2], tries


def worst(windows: list[CpuWindow]) -> dict[str, float]:
    """The most contention any of ``windows`` saw, column by column (NaN only if none could tell)."""
    cols = [w.columns() for w in windows]
    return {k: max((c[k] for c in cols if c[k] == c[k]), default=math.nan) for k in COLUMNS}


class CpuWindow:
    """``with CpuWindow() as w: ...``; then ``w.columns()``."""

    def __enter__(self) -> CpuWindow:
        self.start = (machine_jiffies(), own_seconds(), time.monotonic())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end = (machine_jiffies(), own_seconds(), time.monotonic())

    def columns(self) -> dict[str, float]:
        (j0, own0, t0), (j1, own1, t1) = self.start, self.end
        if j0 is None or j1 is None or t1 <= t0:
            return dict.fromkeys(COLUMNS, math.nan)
        tick = os.sysconf("SC_CLK_TCK")
        others = (j1[0] - j0[0]) / tick - (own1 - own0)
        total = j1[1] - j0[1]
        return {"cpu_others_cores": max(others, 0.0) / (t1 - t0),
                "cpu_steal_frac": (j1[2] - j0[2]) / total if total else 0.0}
