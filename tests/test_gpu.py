"""GPU checks (``pytest -m gpu``; skipped without CUDA): timing, energy, cudagraph and compile modes."""

from __future__ import annotations

import pytest
import torch

from bench.flops import count_flops
from bench.job import run_job
from bench.timing import IterationClock, gpu_busy_ms
from models import build_model
from models.config import compose

pytestmark = pytest.mark.gpu
SMALL = ["backbone=r50", "input=cityscapes", "input.height=256", "input.width=512"]
FAST = ["timing.min_iters=10", "timing.min_seconds=0.5", "timing.warmup_min_seconds=0.5", "timing.stage_iters=5"]


def test_cuda_event_time_within_wall_time():
    a = torch.randn(4096, 4096, device="cuda")
    clock = IterationClock(torch.device("cuda"))
    for _ in range(3):
        clock(lambda: a @ a)
    gpu, wall = clock(lambda: a @ a)
    assert 0 < gpu <= wall * 1.05
    assert gpu_busy_ms(lambda: a @ a, 3) > 0


def test_flops_identical_on_cpu_and_gpu():
    cfg = compose([*SMALL, "input.height=128", "input.width=256"])
    model = build_model(cfg)
    x = torch.rand(1, 3, 128, 256) * 255
    cpu = count_flops(model, x)
    gpu = count_flops(model.cuda(), x.cuda())
    for key in ("gmacs_total", "gflops_total", "gmacs_pixel_decoder", "gflops_pixel_decoder"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-9)


def test_latency_and_energy_row(tmp_path):
    row = run_job(compose([*SMALL, "measure=[latency,energy,memory]", *FAST, "energy.min_seconds=2",
                           "energy.idle_seconds=1", "energy.cooldown_seconds=0.5"]), tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["latency_ms_p50"] > 0 and row["gpu_busy_ms"] > 0 and row["mem_peak_alloc_mb"] > 0
    assert row["energy_j_per_img_gross"] > row["energy_j_per_img_net"] and row["idle_w"] > 0
    assert row["energy_window_s"] >= 2 and row["gpu_name"]


@pytest.mark.parametrize("encoder", ["m2f", "proscale", "lite_m2f", "rt_m2f"])
def test_cudagraph_replay_equals_eager(encoder):
    model = build_model(compose([*SMALL, f"encoder={encoder}"])).cuda()
    x = torch.rand(1, 3, 256, 512, device="cuda") * 255
    with torch.no_grad():
        eager = model(x, postprocess=False)["pred_masks"].clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model(x, postprocess=False)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(x, postprocess=False)
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(out["pred_masks"], eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["compile", "cudagraph"])
def test_modes_run_as_jobs(mode, tmp_path):
    row = run_job(compose([*SMALL, "measure=latency", f"mode={mode}", *FAST, "timing.e2e=false"]), tmp_path)
    assert row["status"] == "ok", row["error"]
    if mode == "compile":
        assert row["compile_seconds"] > 0 and row["recompiles"] == 0
