"""The energy meter's logic against a fake NVML: counter ticks, idle subtraction, throttling, no NVML."""

from __future__ import annotations

import math

import pytest

from bench import energy
from bench.energy import EnergyMeter, decode_reasons, unavailable


class FakeNVML:
    """A GPU whose energy counter (mJ) advances in ``tick``-second steps at the current power."""

    class NVMLError(Exception):
        pass

    def __init__(self, idle_w: float = 100.0, busy_w: float = 400.0, tick: float = 0.1, busy_reasons: int = 0,
                 busy_mhz: int = 1755, uuids: tuple[str, ...] = ("GPU-aaaa",)):
        self.t, self.energy_mj, self.busy = 0.0, 5_000_000.0, False
        self.idle_w, self.busy_w, self.tick, self.busy_reasons = idle_w, busy_w, tick, busy_reasons
        self.busy_mhz, self.uuids = busy_mhz, uuids
        self.fail_reads = 0  # the next N state reads raise NVMLError

    # the fake clock
    def advance(self, seconds: float) -> None:
        self.energy_mj += seconds * (self.busy_w if self.busy else self.idle_w) * 1e3
        self.t += seconds

    def now(self) -> float:
        return self.t

    # the NVML calls the meter and the sampler use
    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetUUID(self, handle) -> bytes:
        return self.uuids[handle[1]].encode()

    def nvmlDeviceGetMaxClockInfo(self, handle, kind) -> int:
        return 1980

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        # the counter only moves on tick boundaries: report the energy at the last tick
        since_tick = self.t - math.floor(self.t / self.tick + 1e-9) * self.tick
        return int(self.energy_mj - since_tick * (self.busy_w if self.busy else self.idle_w) * 1e3)

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        if self.fail_reads:
            self.fail_reads -= 1
            raise self.NVMLError("Not Supported")
        return int((self.busy_w if self.busy else self.idle_w) * 1e3)

    def nvmlDeviceGetClockInfo(self, handle, kind) -> int:
        return self.busy_mhz if self.busy else 345

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


@pytest.mark.parametrize("mask,valid", [(0x20, False), (0x4, True), (0x40 | 0x1, False), (0x1, True), (0x10, True),
                                        (0x8, False)])
def test_throttling_makes_the_row_invalid(mask, valid):
    r = run_window(FakeNVML(busy_reasons=mask))
    assert r["valid"] is valid
    assert r["throttle_reasons"] == ",".join(n for n in decode_reasons(mask) if n != "gpu_idle")  # always recorded
    if not valid:
        assert "throttled" in r["invalid_reason"]
        assert any(name in r["invalid_reason"] for name in decode_reasons(mask) if name != "gpu_idle")


@pytest.mark.parametrize("mhz,valid", [(1755, True), (1500, True), (1400, False), (900, False)])
def test_power_cap_invalidates_only_when_the_clock_drops(mhz, valid):
    # an H100 under load sets sw_power_cap most of the time; nvbench drops a sample below 75 % of the clock
    r = run_window(FakeNVML(busy_reasons=0x4, busy_mhz=mhz))
    assert r["valid"] is valid and r["sm_clock_mhz_min"] == 345  # the idle read before the window
    assert "sw_power_cap" in r["throttle_reasons"]
    if not valid:
        assert f"fell to {mhz} MHz" in r["invalid_reason"] and "1980 MHz" in r["invalid_reason"]


def test_sampler_survives_failed_reads():
    import time

    nvml = FakeNVML()
    nvml.fail_reads = 1  # the sampler's first read (before the window) fails
    r = run_window(nvml)
    assert r["sampler_failures"] == 1 and r["valid"] and r["sm_clock_mhz_max"] == 1755
    nvml.fail_reads = 5  # the thread's loop goes on after failed reads
    with energy.Sampler(nvml, ("gpu", 0), period=0.001) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert sampler.failures == 5 and len(sampler.samples) >= 3 and "Not Supported" in sampler.last_error
    nvml.fail_reads = 10**9
    with energy.Sampler(nvml, ("gpu", 0), period=0.001) as dead:
        pass
    state = dead.summary()
    assert state["sampler_failures"] >= 2 and math.isnan(state["sm_clock_mhz_min"])


def test_nvml_handle_matches_the_cuda_device_by_uuid():
    nvml = FakeNVML(uuids=("GPU-aaaa", "GPU-bbbb", "GPU-cccc"))
    assert energy.nvml_handle(nvml, "GPU-cccc") == (("gpu", 2), "uuid GPU-cccc")
    assert energy.nvml_handle(nvml, "GPU-zzzz")[0] == ("gpu", 0)  # no match: index 0, and it says so
    assert "no UUID match" in energy.nvml_handle(nvml, None)[1]
    assert energy.nvml_handle(nvml, "GPU-cccc", index=1)[0] == ("gpu", 1)  # an explicit index wins


def test_counter_tick_measures_the_update_period():
    nvml = FakeNVML(tick=0.1)
    clock = {"t": 0.0}

    def now():  # each poll advances the fake GPU by 1 ms
        clock["t"] += 0.001
        nvml.advance(0.001)
        return clock["t"]

    assert energy.counter_tick(nvml, ("gpu", 0), seconds=1.0, now=now) == pytest.approx(0.1, abs=0.003)


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


class BrokenCounter(FakeNVML):
    """NVML up, but the energy counter is NotSupported (as on some boards and vGPUs)."""

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        raise self.NVMLError("Not Supported")


def test_nvml_errors_give_nan_energy_with_the_reason_not_a_failed_row():
    from types import SimpleNamespace

    import torch

    from bench.energy import GPUMeter, open_meter
    from bench.measures.energy import measure_energy
    from bench.settings import EnergySettings, JobSettings
    from bench.timing import TimingConfig

    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    row: dict = {}
    gpu = open_meter(BrokenCounter(), None, cuda, EnergySettings(idle_seconds=0.0, cooldown_seconds=0.0), True, row)
    assert gpu.meter is None and "NVML failed: NVMLError: Not Supported" in gpu.reason
    cols = measure_energy(SimpleNamespace(gpu=gpu))
    assert math.isnan(cols["energy_j_per_img_net"]) and "Not Supported" in cols["invalid_reason"]
    # a given idle power skips the baseline; a counter that fails inside the window is NaN too
    gpu = open_meter(BrokenCounter(), None, cuda, EnergySettings(idle_w=120), True, row := {})
    assert gpu.meter is not None and gpu.idle_w == 120 and row["nvml_device"].startswith("nvml index 0")
    settings = JobSettings(("energy",), torch.device("cpu"), timing=TimingConfig(
        warmup_min_seconds=0, warmup_window=1, warmup_tolerance=1.0))
    ctx = SimpleNamespace(gpu=gpu, settings=settings, images=torch.zeros(1),
                          runner=lambda pp, mode: (lambda: None, {}))
    cols = measure_energy(ctx)
    assert math.isnan(cols["energy_j_per_img_gross"]) and "during the window" in cols["invalid_reason"]
    assert isinstance(GPUMeter(None).idle_w, float)
