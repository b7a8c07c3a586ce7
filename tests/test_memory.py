"""CPU peak memory from the profiler's allocation events: repeatable, and it sees a known activation."""

from __future__ import annotations

import torch

from bench.config import compose
from bench.job import run_job
from bench.memory import MB, peak_memory, tensor_peak_bytes


def test_a_known_large_activation_is_the_peak():
    def forward():
        big = torch.ones(16 * MB // 4)  # 16 MB of float32
        small = big[:1024].sum()
        del big
        return small + torch.ones(MB // 4).sum()  # 1 MB after the big one is freed

    peak = tensor_peak_bytes(forward)
    assert 16 * MB <= peak < 16 * MB + 64 * 1024


def test_the_peak_counts_what_is_alive_at_once_not_the_sum():
    def sequential():
        for _ in range(8):
            x = torch.ones(4 * MB // 4)
            del x

    assert 4 * MB <= tensor_peak_bytes(sequential) < 4 * MB + 64 * 1024


def test_the_cpu_columns():
    cols = peak_memory(lambda: torch.ones(8 * MB // 4).sum(), torch.device("cpu"))
    assert cols["mem_method"].startswith("cpu_profiler_tensors")
    assert 8 <= cols["mem_peak_alloc_mb"] < 8.1
    assert cols["mem_peak_reserved_mb"] > cols["mem_peak_alloc_mb"]  # the process's RSS holds much more


def test_one_configuration_measured_twice_gives_the_same_peak(tmp_path):
    cfg = compose(["backbone=r50", "input=ade20k", "input.height=128", "input.width=128", "measure=memory"])
    a = run_job(cfg, tmp_path / "a")
    b = run_job(cfg, tmp_path / "b")  # same process: a warm allocator, which moves the RSS, not this
    assert a["status"] == b["status"] == "ok"
    assert a["mem_peak_alloc_mb"] > 1
    assert abs(a["mem_peak_alloc_mb"] - b["mem_peak_alloc_mb"]) <= 0.01 * a["mem_peak_alloc_mb"]
