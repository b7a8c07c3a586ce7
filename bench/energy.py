"""GPU board energy from NVML's total-energy counter, with an idle baseline and a state sampler.

Window semantics follow Zeus: synchronise, read the counter, run for at least ``min_seconds``,
synchronise, read it again. The idle baseline is measured in the same job after a cooldown.
``gross`` is the counter delta per image; ``net`` subtracts idle power x window time. A 10 Hz
sampler thread records SM clock, temperature, power and clock-event (throttle) reasons; a window
that saw thermal or power throttling is ``valid=false``. Without NVML every energy column is NaN
and ``invalid_reason`` says why: never 0. The NVML module is injectable (tests use a fake).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# nvmlClocksEventReasons bits (nvml.h); the ones that make a measurement window invalid are marked
THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
INVALIDATING = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0


def decode_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


def load_nvml() -> tuple[Any | None, str | None]:
    """The initialised ``pynvml`` module (from nvidia-ml-py), or (None, reason)."""
    try:
        import pynvml
    except ImportError as err:
        return None, f"nvidia-ml-py not importable: {err}"
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML unavailable: {err}"
    return pynvml, None


@dataclass
class Sample:
    t: float
    power_w: float
    sm_mhz: float
    temp_c: float
    reasons: int


@dataclass
class Sampler:
    """Background thread sampling GPU state every ``period`` seconds."""

    nvml: Any
    handle: Any
    period: float = 0.1
    samples: list[Sample] = field(default_factory=list)

    def read(self) -> Sample:
        n, h = self.nvml, self.handle
        reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
        reasons = reasons or n.nvmlDeviceGetCurrentClocksThrottleReasons
        return Sample(time.monotonic(), n.nvmlDeviceGetPowerUsage(h) / 1e3,
                      n.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM), n.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU),
                      int(reasons(h)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.read())
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._stop = threading.Event()
        self.samples.append(self.read())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.read())

    def summary(self) -> dict[str, Any]:
        mask = 0
        for s in self.samples:
            mask |= s.reasons
        # gpu_idle is set between kernels and says nothing about throttling
        reasons = [r for r in decode_reasons(mask) if r != "gpu_idle"]
        return {"sm_clock_mhz_min": min(s.sm_mhz for s in self.samples),
                "sm_clock_mhz_max": max(s.sm_mhz for s in self.samples),
                "temp_c_start": self.samples[0].temp_c, "temp_c_end": self.samples[-1].temp_c,
                "throttle_reasons": ",".join(reasons), "throttle_mask": mask,
                "power_w_max_sampled": max(s.power_w for s in self.samples)}


class EnergyMeter:
    """Counter-based energy windows on one GPU."""

    def __init__(self, nvml: Any, index: int = 0, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], float] = time.monotonic, sample_period: float = 0.1) -> None:
        self.nvml, self.sleep, self.now, self.sample_period = nvml, sleep, now, sample_period
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def energy_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3  # mJ -> J

    def idle_power(self, seconds: float, cooldown: float) -> float:
        """Average board power (W) over ``seconds`` of idling after ``cooldown`` seconds."""
        self.sleep(cooldown)
        e0, t0 = self.energy_j(), self.now()
        self.sleep(seconds)
        e1, t1 = self.energy_j(), self.now()
        return (e1 - e0) / (t1 - t0)

    def window(self, fn: Callable[[], Any], images_per_call: int, min_seconds: float,
               sync: Callable[[], None], idle_w: float) -> dict[str, Any]:
        """Run ``fn`` for at least ``min_seconds`` between two counter reads; energy per image."""
        with Sampler(self.nvml, self.handle, self.sample_period) as sampler:
            sync()
            e0, t0 = self.energy_j(), self.now()
            calls = 0
            while calls == 0 or self.now() - t0 < min_seconds:
                fn()
                calls += 1
            sync()
            e1, t1 = self.energy_j(), self.now()
        dt, de, images = t1 - t0, e1 - e0, calls * images_per_call
        state = sampler.summary()
        reasons = []
        if state["throttle_mask"] & INVALIDATING:
            reasons.append(f"throttled during the energy window: {state['throttle_reasons']}")
        if de <= 0:
            reasons.append("energy counter did not advance during the window")
        return {"energy_j_per_img_gross": de / images, "energy_j_per_img_net": (de - idle_w * dt) / images,
                "power_w_avg": de / dt, "idle_w": idle_w, "energy_window_s": dt, "energy_images": images,
                **{k: v for k, v in state.items() if k != "throttle_mask"},
                "valid": not reasons, "invalid_reason": "; ".join(reasons) or None}


def unavailable(reason: str) -> dict[str, Any]:
    """Energy columns when nothing could be measured: NaN, with the reason."""
    from bench.row import ENERGY

    return {**dict.fromkeys(ENERGY, math.nan), "invalid_reason": f"energy not measured: {reason}"}
