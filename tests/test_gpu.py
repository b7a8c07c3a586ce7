"""GPU checks (``pytest -m gpu``; skipped without CUDA): timing, energy, cudagraph and compile modes."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import compose
from bench.flops import count_flops
from bench.job import run_job
from bench.timing import IterationClock, gpu_busy_ms
from models import build_model

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: cases that share a code object would otherwise pile up cache entries
    until dynamo's recompile limit, past which it runs eager silently (the job's runner makes that an error)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


SMALL = ["backbone=r50", "input=cityscapes", "input.height=256", "input.width=512"]
FAST = ["timing.min_iters=10", "timing.min_seconds=0.5", "timing.warmup_min_seconds=0.5", "timing.warmup_max_seconds=5",
        "timing.stage_iters=5"]


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


@pytest.mark.parametrize("backend", ["pytorch", "triton"])
@pytest.mark.parametrize("mode", ["compile", "cudagraph"])
def test_modes_run_as_jobs(mode, backend, tmp_path):
    row = run_job(compose([*SMALL, "measure=[latency,roofline]", f"mode={mode}", f"msda_backend={backend}", *FAST,
                           "timing.e2e=false"]), tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["msda_backend"] == backend and row["latency_ms_pixel_decoder_alone_p50"] > 0
    # > 1 is possible here: at 256x512 the working set fits in L2, above the DRAM-copy ceiling
    assert 0 < row["roofline_frac_pixel_decoder"] < math.inf
    if mode == "compile":
        assert row["compile_seconds"] > 0 and row["recompiles"] == 0 and row["graph_breaks"] == 0


# ---------------------------------------------------------------- the triton MSDA backend on CUDA
def _core_inputs(shapes, n, lq, dtype=torch.float32, m=8, d=32, p=4):
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g)
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2  # points outside the maps too
    w = torch.rand(n, lq, m, len(shapes), p, generator=g).softmax(-1)
    return [t.cuda() for t in (value, loc, w)]


@pytest.mark.parametrize("shapes", [[(64, 128)], [(32, 64), (64, 128)], [(32, 64), (64, 128), (128, 256)],
                                    [(25, 34), (50, 68), (100, 136)], [(7, 3), (13, 29), (2, 2), (40, 11)]])
@pytest.mark.parametrize("n", [1, 3])
def test_triton_core_equals_pytorch_core(shapes, n):
    from models.ops import msda_core

    value, loc, w = _core_inputs(shapes, n, lq=1000)
    ref = msda_core(value, shapes, loc, w, backend="pytorch")
    got = msda_core(value, shapes, loc, w, backend="triton")
    assert (got - ref).abs().max().item() <= 1e-4
    for dtype in (torch.bfloat16, torch.float16):
        for inputs in (_as_model_passes(value, loc, w, dtype), _all_low(value, loc, w, dtype)):
            # the reference sees the same rounded inputs: rounding locations to bf16 moves taps by up to
            # 0.5 px at these map sizes, which no kernel can undo (a false alarm against unrounded ones)
            ref = msda_core(*(t.float() for t in inputs[:1]), shapes, *(t.float() for t in inputs[1:]),
                            backend="pytorch")
            half = msda_core(inputs[0], shapes, *inputs[1:], backend="triton")
            assert half.dtype == dtype
            assert ((half.float() - ref).norm() / ref.norm()).item() <= 1e-2


def _as_model_passes(value, loc, w, dtype):
    """Under autocast the model hands the core a low-precision ``value``; locations and softmax weights stay fp32."""
    return value.to(dtype), loc, w


def _all_low(value, loc, w, dtype):
    return value.to(dtype), loc.to(dtype), w.to(dtype)


def test_auto_picks_triton_on_cuda():
    from models.ops import resolve_msda_backend

    assert resolve_msda_backend("auto", "cuda") == "triton"


@pytest.mark.parametrize("encoder", ["m2f", "proscale", "proscale_111", "lite_m2f"])
def test_encoders_equal_across_backends_on_cuda(encoder):
    x = torch.rand(2, 3, 256, 512, device="cuda") * 255
    outs = {}
    for backend in ("pytorch", "triton"):
        torch.manual_seed(0)
        model = build_model(compose([*SMALL, f"encoder={encoder}", f"msda_backend={backend}"])).cuda()
        with torch.no_grad():
            outs[backend] = model(x, postprocess=False)["pred_masks"]
    torch.testing.assert_close(outs["triton"], outs["pytorch"], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("encoder", ["m2f", "proscale", "lite_m2f", "rt_m2f"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compile_and_cudagraph_pixel_decoders_equal_eager(encoder, precision):
    from bench.runners import pixel_decoder_runner

    torch.manual_seed(0)
    model = build_model(compose([*SMALL, f"encoder={encoder}", "msda_backend=triton",
                                 f"encoder.force_fp32={str(precision == 'fp32').lower()}"])).cuda()
    x = torch.rand(1, 3, 256, 512, device="cuda") * 255
    outs = {}
    for mode in ("eager", "compile", "cudagraph"):
        run, _ = pixel_decoder_runner(model, x, {"device": torch.device("cuda"), "precision": precision,
                                                 "mode": mode})
        outs[mode] = run().mask_features.float().clone()
    tol = {"atol": 2e-3, "rtol": 2e-2} if precision == "bf16" else {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(outs["compile"], outs["eager"], **tol)
    torch.testing.assert_close(outs["cudagraph"], outs["eager"], **tol)
