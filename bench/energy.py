"""GPU board energy from NVML's total-energy counter, with an idle baseline and a state sampler.

Window semantics follow Zeus: synchronise, read the counter, run for at least ``min_seconds``,
synchronise, read it again. The idle baseline is measured before the job puts any load on the GPU
(or given as ``energy.idle_w``, measured once before a whole run). ``gross`` is the counter delta
per image; ``net`` subtracts idle power x window time. A 10 Hz sampler thread records SM clock,
temperature, power and clock-event (throttle) reasons, and survives a failed read. A window is
``valid=false`` when it saw thermal or hardware slowdown, or when the SM clock fell below 75 % of
the GPU's maximum (nvbench's rule): the software power-cap flag alone is recorded, not fatal, since
an H100 under load sets it most of the time. The NVML device is the CUDA device matched by UUID.
Without NVML, or when NVML fails, every energy column is NaN and ``invalid_reason`` says why:
never 0. The NVML module is injectable (tests use a fake).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# nvmlClocksEventReasons bits (nvml.h); the ones that make a measurement window invalid are marked
THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
INVALIDATING = 0x8 | 0x20 | 0x40 | 0x80  # slowdowns that always invalidate a window
CLOCK_DROP = 0.75  # a window whose SM clock fell below this fraction of the maximum is invalid
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0


def nvml_error(nvml: Any) -> type[BaseException] | tuple[type[BaseException], ...]:
    """The NVML module's error class (NotSupported, GPU lost, ...), for ``except`` clauses."""
    return getattr(nvml, "NVMLError", OSError)


def nvml_text(value: Any) -> str:
    """An NVML string (bytes in older bindings) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_uuid(device: Any = None) -> str | None:
    """``GPU-xxxxxxxx-...`` of a CUDA device as torch sees it (None when unknown)."""
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def nvml_handle(nvml: Any, uuid: str | None, index: int | None = None) -> tuple[Any, str]:
    """The NVML handle of the GPU with ``uuid`` (torch's and NVML's device orders can differ, e.g. under
    ``CUDA_VISIBLE_DEVICES``); an explicit ``index`` wins. Returns (handle, how it was matched)."""
    if index is not None:
        return nvml.nvmlDeviceGetHandleByIndex(index), f"nvml index {index} (energy.gpu_index)"
    if uuid:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            if nvml_text(nvml.nvmlDeviceGetUUID(handle)) == uuid:
                return handle, f"uuid {uuid}"
    return nvml.nvmlDeviceGetHandleByIndex(0), "nvml index 0 (no UUID match)"


def counter_tick(nvml: Any, handle: Any, seconds: float = 1.0, now: Callable[[], float] = time.monotonic
                 ) -> float:
    """Median seconds between changes of the energy counter, polled for ``seconds`` (NaN if it never moved)."""
    changes, last, start = [], nvml.nvmlDeviceGetTotalEnergyConsumption(handle), now()
    while now() - start < seconds:
        value = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        if value != last:
            changes.append(now())
            last = value
        time.sleep(0.001)
    gaps = [b - a for a, b in zip(changes, changes[1:], strict=False)]
    return float(sorted(gaps)[len(gaps) // 2]) if gaps else math.nan


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


# GPU state columns a sampled window fills (the row's environment group)
STATE_COLUMNS = ("sm_clock_mhz_min", "sm_clock_mhz_min_busy", "sm_clock_mhz_max", "temp_c_start", "temp_c_end",
                 "throttle_reasons", "sampler_failures")


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
    failures: int = 0
    last_error: str | None = None

    def read(self) -> Sample:
        n, h = self.nvml, self.handle
        reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
        reasons = reasons or n.nvmlDeviceGetCurrentClocksThrottleReasons
        return Sample(time.monotonic(), n.nvmlDeviceGetPowerUsage(h) / 1e3,
                      n.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM), n.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU),
                      int(reasons(h)))

    def sample(self) -> None:
        """One read; a failed read is counted, never fatal (the thread must outlive a transient error)."""
        try:
            self.samples.append(self.read())
        except Exception as err:  # NVMLError (NotSupported, Unknown, ...) or a driver hiccup
            self.failures += 1
            self.last_error = f"{type(err).__name__}: {err}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def summary(self) -> dict[str, Any]:
        """GPU state over the window: clocks, temperatures, clock-event reasons (NaN where nothing was read)."""
        mask = 0
        for s in self.samples:
            mask |= s.reasons
        # gpu_idle is set between kernels and says nothing about throttling
        reasons = [r for r in decode_reasons(mask) if r != "gpu_idle"]
        nan = math.nan
        got = self.samples
        busy = [s.sm_mhz for s in got if not s.reasons & 0x1]  # reads while kernels ran (not "gpu_idle")
        return {"sm_clock_mhz_min": min(s.sm_mhz for s in got) if got else nan,
                "sm_clock_mhz_min_busy": min(busy) if busy else nan,
                "sm_clock_mhz_max": max(s.sm_mhz for s in got) if got else nan,
                "temp_c_start": got[0].temp_c if got else nan, "temp_c_end": got[-1].temp_c if got else nan,
                "throttle_reasons": ",".join(reasons), "throttle_mask": mask,
                "power_w_max_sampled": max(s.power_w for s in got) if got else nan,
                "sampler_failures": self.failures}


def window_validity(state: Mapping[str, Any], max_mhz: float) -> list[str]:
    """Why a window's GPU state makes its numbers invalid (empty: valid)."""
    reasons = []
    if state["throttle_mask"] & INVALIDATING:
        reasons.append(f"throttled during the window: {state['throttle_reasons']}")
    low = state["sm_clock_mhz_min_busy"]  # a read between kernels may show idle clocks legitimately
    if max_mhz == max_mhz and low == low and low < CLOCK_DROP * max_mhz:
        reasons.append(f"SM clock fell to {low:.0f} MHz, below {CLOCK_DROP:.0%} of the {max_mhz:.0f} MHz maximum "
                       f"(clock events: {state['throttle_reasons'] or 'none'})")
    return reasons


def max_sm_clock(nvml: Any, handle: Any) -> float:
    """The GPU's maximum SM clock (MHz), the reference of the clock-drop rule (NaN if unreadable)."""
    try:
        return float(nvml.nvmlDeviceGetMaxClockInfo(handle, NVML_CLOCK_SM))
    except Exception:  # NotSupported on some boards: the rule is then off, and the row says the flags
        return math.nan


class EnergyMeter:
    """Counter-based energy windows on one GPU (``handle``: an NVML handle, see ``nvml_handle``)."""

    def __init__(self, nvml: Any, handle: Any = None, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], float] = time.monotonic, sample_period: float = 0.1) -> None:
        self.nvml, self.sleep, self.now, self.sample_period = nvml, sleep, now, sample_period
        self.handle = handle if handle is not None else nvml.nvmlDeviceGetHandleByIndex(0)

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
        reasons = window_validity(state, max_sm_clock(self.nvml, self.handle))
        if de <= 0:
            reasons.append("energy counter did not advance during the window")
        return {"energy_j_per_img_gross": de / images, "energy_j_per_img_net": (de - idle_w * dt) / images,
                "power_w_avg": de / dt, "idle_w": idle_w, "energy_window_s": dt, "energy_images": images,
                **{k: v for k, v in state.items() if k != "throttle_mask"},
                "valid": not reasons, "invalid_reason": "; ".join(reasons) or None}


@contextmanager
def sampled_state(meter: EnergyMeter | None, out: dict[str, Any], window: str) -> Iterator[None]:
    """Sample the GPU state (clocks, temperature, clock events) over a timed window into ``out``, with the
    reasons that make it invalid (a clock drop, a slowdown) under ``"invalid"``. Nothing without a meter."""
    if meter is None:
        yield
        return
    sampler = Sampler(meter.nvml, meter.handle, meter.sample_period)
    with sampler:
        yield
    state = sampler.summary()
    out.update({k: state[k] for k in STATE_COLUMNS}, gpu_state_window=window)
    out["invalid"] = window_validity(state, max_sm_clock(meter.nvml, meter.handle))


@dataclass
class GPUMeter:
    """The job's NVML meter (None with the reason when there is none) and the idle baseline."""

    meter: EnergyMeter | None
    reason: str | None = None
    idle_w: float = math.nan


def open_meter(nvml: Any, nvml_reason: str | None, device: Any, ecfg: Any, want_idle: bool,
               row: dict[str, Any]) -> GPUMeter:
    """The NVML meter of the job's CUDA device (matched by UUID) and, when energy is measured, the idle
    power: ``energy.idle_w`` or a baseline taken now, before the job loads the GPU."""
    if device.type != "cuda":
        return GPUMeter(None, "no CUDA device (NVML energy needs a GPU)")
    if nvml is None:
        return GPUMeter(None, nvml_reason or "NVML unavailable")
    try:
        handle, how = nvml_handle(nvml, cuda_uuid(device), ecfg.gpu_index)
        row["nvml_device"] = how
        meter = EnergyMeter(nvml, handle, sample_period=ecfg.sample_period)
        if not want_idle:
            return GPUMeter(meter)
        idle_w = ecfg.idle_w if ecfg.idle_w is not None else meter.idle_power(ecfg.idle_seconds, ecfg.cooldown_seconds)
        return GPUMeter(meter, idle_w=idle_w)
    except nvml_error(nvml) as err:
        return GPUMeter(None, f"NVML failed: {type(err).__name__}: {err}")


def unavailable(reason: str) -> dict[str, Any]:
    """Energy columns when nothing could be measured: NaN, with the reason."""
    from bench.row import ENERGY

    return {**dict.fromkeys(ENERGY, math.nan), "invalid_reason": f"energy not measured: {reason}"}
