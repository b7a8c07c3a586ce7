"""The energy meter's logic against a fake NVML: counter ticks, idle subtraction, throttling, no NVML."""

from __future__ import annotations

import math

import pytest

from bench import energy
from bench.energy import EnergyMeter, decode_reasons, unavailable


class FakeNVML:
    """A GPU whose energy counter (mJ) advances in ``tick``-second steps at the current power."""

    def __init__(self, idle_w: float = 100.0, busy_w: float = 400.0, tick: float = 0.1, busy_reasons: int = 0):
        self.t, self.energy_mj, self.busy = 0.0, 5_000_000.0, False
        self.idle_w, self.busy_w, self.tick, self.busy_reasons = idle_w, busy_w, tick, busy_reasons

    # the fake clock
    def advance(self, seconds: float) -> None:
        self.energy_mj += seconds * (self.busy_w if self.busy else self.idle_w) * 1e3
        self.t += seconds

    def now(self) -> float:
        return self.t

    # the NVML calls the meter and the sampler use
    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        # the counter only moves on tick boundaries: report the energy at the last tick
        since_tick = self.t - math.floor(self.t / self.tick + 1e-9) * self.tick
        return int(self.energy_mj - since_tick * (self.busy_w if self.busy else self.idle_w) * 1e3)

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        return int((self.busy_w if self.busy else self.idle_w) * 1e3)

    def nvmlDeviceGetClockInfo(self, handle, kind) -> int:
        return 1755 if self.busy else 345

    def nvmlDeviceGetTemperature(self, handle, kind) -> int:
        return 55 if self.busy else 35

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle) -> int:
        return self.busy_reasons if self.busy else 0x1  # idle GPUs report "gpu_idle"


def run_window(nvml: FakeNVML, seconds_per_call: float = 0.05, images_per_call: int = 2) -> dict:
    meter = EnergyMeter(nvml, sleep=nvml.advance, now=nvml.now, sample_period=0.001)
    idle_w = meter.idle_power(seconds=3.0, cooldown=2.0)

    def work():
        nvml.busy = True
        nvml.advance(seconds_per_call)

    result = meter.window(work, images_per_call, min_seconds=10.0, sync=lambda: None, idle_w=idle_w)
    nvml.busy = False
    return result


def test_gross_net_and_power():
    r = run_window(FakeNVML())
    assert r["idle_w"] == pytest.approx(100.0, rel=1e-3)
    assert r["energy_window_s"] == pytest.approx(10.0, abs=0.051)
    images = r["energy_images"]
    assert images == 2 * round(r["energy_window_s"] / 0.05)
    # 400 W for ~10 s over ~400 images: ~10 J/img gross, ~7.5 J/img net of 100 W idle; ticks cost < 1 %
    assert r["energy_j_per_img_gross"] == pytest.approx(400 * r["energy_window_s"] / images, rel=0.01)
    assert r["energy_j_per_img_net"] == pytest.approx(300 * r["energy_window_s"] / images, rel=0.015)
    assert r["power_w_avg"] == pytest.approx(400, rel=0.01)
    assert r["valid"] and r["invalid_reason"] is None
    assert r["sm_clock_mhz_max"] == 1755 and r["temp_c_end"] >= r["temp_c_start"]


def test_coarse_ticks_are_what_limits_short_windows():
    # with a 1-s counter tick the same window's gross energy is off by up to a tick's worth
    r = run_window(FakeNVML(tick=1.0))
    assert abs(r["energy_j_per_img_gross"] * r["energy_images"] - 4000) <= 400 + 1e-6


@pytest.mark.parametrize("mask,valid", [(0x20, False), (0x4, False), (0x40 | 0x1, False), (0x1, True), (0x10, True)])
def test_throttling_makes_the_row_invalid(mask, valid):
    r = run_window(FakeNVML(busy_reasons=mask))
    assert r["valid"] is valid
    if not valid:
        assert "throttled" in r["invalid_reason"]
        assert any(name in r["invalid_reason"] for name in decode_reasons(mask) if name != "gpu_idle")


def test_counter_that_never_moves_is_invalid():
    nvml = FakeNVML(busy_w=0.0, idle_w=0.0)
    r = run_window(nvml)
    assert not r["valid"] and "did not advance" in r["invalid_reason"]


def test_missing_nvml_gives_nan_and_a_reason(monkeypatch):
    cols = unavailable("no GPU")
    assert all(math.isnan(v) for k, v in cols.items() if k != "invalid_reason")
    assert cols["invalid_reason"] == "energy not measured: no GPU"
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    module, reason = energy.load_nvml()
    assert module is None and "nvidia-ml-py" in reason


def test_decode_reasons():
    assert decode_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_reasons(0) == []
