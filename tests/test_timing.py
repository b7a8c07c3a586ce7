"""Timer statistics, warm-up and loop termination on synthetic samples (no real timing asserted)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.measures.energy import energy_warmup
from bench.timing import TimingConfig, is_stable, shortened, summarize, time_loop, warm_up


class FakeClock:
    """Returns scripted latencies and advances a fake wall clock by each one."""

    def __init__(self, samples):
        self.samples, self.i, self.t = list(samples), 0, 0.0

    def sync(self) -> None:
        pass

    def __call__(self, fn):
        fn()
        ms = self.samples[min(self.i, len(self.samples) - 1)]
        self.i += 1
        self.t += ms / 1e3
        return ms, ms + 0.5

    def now(self) -> float:
        return self.t


def test_summarize_known_samples():
    s = summarize([float(i) for i in range(1, 101)], batch=4, bootstrap=500)
    assert s["latency_ms_p50"] == pytest.approx(50.5)
    assert s["latency_ms_p90"] == pytest.approx(90.1)
    assert s["latency_ms_p99"] == pytest.approx(99.01)
    assert s["latency_ms_mean"] == pytest.approx(50.5)
    assert s["latency_ms_std"] == pytest.approx(np.std(range(1, 101), ddof=1))
    assert s["fps"] == pytest.approx(4 * 1000 / 50.5)
    assert 0 < s["latency_ms_ci95"] < 10


def test_bootstrap_ci_covers_the_true_median():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 1.0, size=400)
    s = summarize(list(x), batch=1)
    assert abs(s["latency_ms_p50"] - 10.0) < 2 * s["latency_ms_ci95"]
    wide = summarize(list(rng.normal(10.0, 5.0, size=400)), batch=1)
    assert wide["latency_ms_ci95"] > 2 * s["latency_ms_ci95"]  # noisier samples, wider interval
    with pytest.raises(ValueError):
        summarize([], batch=1)


def test_is_stable():
    assert not is_stable([10.0] * 19, 10, 0.02)
    assert is_stable([10.0] * 10 + [10.1] * 10, 10, 0.02)
    assert not is_stable([10.0] * 10 + [11.0] * 10, 10, 0.02)


def test_warm_up_stops_when_stable_after_min_time():
    # latency decaying towards 10 ms (caches, allocator, autotuning), as a real warm-up does
    clock = FakeClock([10.0 + 100.0 * 0.8**i for i in range(500)])
    cfg = TimingConfig(warmup_min_seconds=0.5, warmup_max_seconds=100, warmup_window=10, warmup_tolerance=0.02)
    samples, stable = warm_up(lambda: None, clock, cfg, now=clock.now)
    assert stable and clock.now() >= 0.5
    assert samples[-1] < 10.0 * 1.02 < samples[-20]  # it waited for the decay to flatten, no longer
    assert not is_stable(samples[:-1], 10, 0.02)


def test_warm_up_respects_min_seconds():
    clock = FakeClock([10.0] * 1000)  # stable at once, but the minimum warm-up time still applies
    cfg = TimingConfig(warmup_min_seconds=1.0, warmup_max_seconds=100, warmup_window=10, warmup_tolerance=0.02)
    samples, stable = warm_up(lambda: None, clock, cfg, now=clock.now)
    assert stable and len(samples) == 100


def test_warm_up_gives_up_at_max_time():
    clock = FakeClock([10.0, 30.0] * 1000)  # windows of 5 alternate medians 10 / 30: never stable
    cfg = TimingConfig(warmup_min_seconds=0.1, warmup_max_seconds=1.0, warmup_window=5, warmup_tolerance=0.02)
    samples, stable = warm_up(lambda: None, clock, cfg, now=clock.now)
    assert not stable and 1.0 <= clock.now() < 1.05


def test_a_secondary_warm_up_is_capped_by_the_same_share():
    cfg = TimingConfig(min_iters=20, min_seconds=2, warmup_min_seconds=1, warmup_max_seconds=15, secondary=0.2)
    short = shortened(cfg, cfg.secondary)
    assert (short.min_iters, short.min_seconds, short.warmup_min_seconds) == (4, 0.4, 0.2)
    assert short.warmup_max_seconds == pytest.approx(3.0)  # an unstable warm-up gives up after 3 s, not 15
    clock = FakeClock([10.0, 30.0] * 1000)  # never stable
    warm_up(lambda: None, clock, dataclasses.replace(short, warmup_window=5), now=clock.now)
    assert 3.0 <= clock.now() < 3.05
    assert shortened(TimingConfig(warmup_min_seconds=5, warmup_max_seconds=5), 0.1).warmup_max_seconds == 0.5
    # the energy window's warm-up: full on a cold runner, shortened on one the latency loop warmed
    assert energy_warmup(cfg, runner_warm=False) == cfg
    assert energy_warmup(cfg, runner_warm=True) == short


def test_time_loop_needs_min_iters_and_min_seconds():
    clock = FakeClock([10.0] * 1000)
    gpu, wall = time_loop(lambda: None, clock, TimingConfig(min_iters=5, min_seconds=0.2), now=clock.now)
    assert len(gpu) == 20 and all(w == g + 0.5 for g, w in zip(gpu, wall, strict=True))  # 0.2 s of 10 ms
    clock = FakeClock([10.0] * 1000)
    gpu, _ = time_loop(lambda: None, clock, TimingConfig(min_iters=50, min_seconds=0.01), now=clock.now)
    assert len(gpu) == 50
    clock = FakeClock([10.0] * 1000)
    gpu, _ = time_loop(lambda: None, clock, TimingConfig(min_iters=50, min_seconds=100, max_iters=70), now=clock.now)
    assert len(gpu) == 70


def test_timing_settings_reject_unknown_options():
    from bench.settings import InvalidConfig, _timing

    with pytest.raises(InvalidConfig, match=r"unknown timing option\(s\) \['min_iter'\]; valid: \['min_iters'"):
        _timing({"min_iter": 3})
    assert _timing({"min_iters": 3}).min_iters == 3
