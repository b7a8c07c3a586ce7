"""The correctness checks of a GPU validation run: every equality it asserts, with both sides under the
same precision settings (and the settings each side ran under recorded, so a rehearsal on CPU can prove it).

- the triton MSDA core against the pytorch core (one shape per level count; fp32, and a bf16 value as the
  model passes it under autocast, against the same rounded value);
- a CUDA-graph replay of M2F against its eager forward, both under ``precision_context("fp32")``;
- M2F and PRO-SCALE (3,3,3)+LPE across MSDA backends;
- FLOP columns counted on CPU and on the run's device.

On CPU (``smoke``) every check runs at tiny shapes: the graph check replays an eager runner instead of a
captured graph (the stand-in still compares outputs and the precision state of both sides), and the FLOP
check compares CPU with CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

LEVEL_SHAPES = {1: [(64, 128)], 2: [(32, 64), (64, 128)], 3: [(32, 64), (64, 128), (128, 256)],
                4: [(16, 32), (32, 64), (64, 128), (128, 256)]}
SMOKE_SHAPES = {1: [(4, 6)], 2: [(3, 4), (4, 6)], 3: [(2, 3), (3, 4), (4, 6)], 4: [(2, 2), (2, 3), (3, 4), (4, 6)]}


def correctness(device: Any, smoke: bool) -> dict:
    """Every check; ``failed_checks`` names those that failed."""
    import torch

    from models.ops import msda_core, resolve_msda_backend
    from scripts.gpu_fast_path import core_call

    out: dict[str, Any] = {}
    triton_ok = resolve_backend_or_none(resolve_msda_backend, device)
    for levels, shapes in (SMOKE_SHAPES if smoke else LEVEL_SHAPES).items():
        if not triton_ok:
            out["core"] = "skipped: the triton backend is not available here"
            break
        value, loc, w = core_inputs(shapes, device, smoke)
        for dt_name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            ref = msda_core(value.to(dt).float(), shapes, loc, w, backend="pytorch")  # the same rounded value
            got = core_call(value, shapes, loc, w, "triton", dt).float()
            err = float((got - ref).norm() / ref.norm())
            out[f"core_L{levels}_{dt_name}_rel_err"] = err
            out[f"core_L{levels}_{dt_name}_ok"] = err <= (1e-5 if dt == torch.float32 else 1e-2)
    size = (32, 64) if smoke else (256, 512)
    graph = cudagraph_check(device, size, "cudagraph" if device.type == "cuda" else "eager")
    out["cudagraph_check"] = graph
    out["cudagraph_equals_eager"] = graph["equal"] and graph["same_precision"]
    if triton_ok:
        for enc in ("m2f", "proscale_333"):
            diff = backends_diff(enc, device, size)
            out[f"{enc}_backends_max_abs_diff"] = diff["max_abs_diff"]
            out[f"{enc}_backends_same_precision"] = diff["same_precision"]
    out["flops_cpu_vs_device"] = flops_check(size, device)
    out["failed_checks"] = failed(out)
    return out


def failed(out: dict[str, Any]) -> list[str]:
    """The checks in ``out`` that did not hold."""
    bad = [k for k, val in out.items() if (k.endswith("_ok") or k.endswith("_same_precision")
                                          or k == "cudagraph_equals_eager") and val is False]
    bad += [k for k, val in out.items() if k.endswith("_backends_max_abs_diff") and not val <= 1e-3]
    return bad + (["flops_cpu_vs_device"] if isinstance(out.get("flops_cpu_vs_device"), dict) else [])


def resolve_backend_or_none(resolve: Callable, device: Any) -> bool:
    try:
        return resolve("triton", device) == "triton"
    except RuntimeError:
        return False


def core_inputs(shapes, device, smoke: bool):
    import torch

    g = torch.Generator().manual_seed(0)
    s, m, d, p, lq = sum(h * w for h, w in shapes), 8, 32, 4, (20 if smoke else 4096)
    value = torch.randn(1, s, m, d, generator=g)
    loc = torch.rand(1, lq, m, len(shapes), p, 2, generator=g) * 1.2 - 0.1
    w = torch.rand(1, lq, m, len(shapes), p, generator=g).softmax(-1)
    return value.to(device), loc.to(device), w.to(device)


def build(overrides: list[str], size: tuple[int, int], device: Any):
    """A seeded R50 model at ``size`` on ``device``."""
    import torch

    from bench.config import compose
    from models import build_model

    torch.manual_seed(0)
    cfg = compose(["backbone=r50", "input=cityscapes", f"input.height={size[0]}", f"input.width={size[1]}",
                   *overrides])
    return build_model(cfg).to(device)


def precision_state() -> dict[str, Any]:
    """The settings that decide how an fp32 forward computes: TF32 for convolutions and matmuls, autocast."""
    import torch

    return {"cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision(),
            "autocast": torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")}


class StateLog:
    """Records :func:`precision_state` at every forward of a module (a graph records it at capture)."""

    def __init__(self, module: Any) -> None:
        self.states: list[dict[str, Any]] = []
        self.handle = module.register_forward_pre_hook(lambda m, a: self.states.append(precision_state()))

    def take(self) -> list[dict[str, Any]]:
        states, self.states = self.states, []
        return states


def uniform(*sides: list[dict[str, Any]]) -> bool:
    """Every forward of every side ran under one and the same precision state."""
    seen = [s for side in sides for s in side]
    return bool(seen) and all(all(side) for side in sides) and all(s == seen[0] for s in seen)


def cudagraph_check(device: Any, size: tuple[int, int], mode: str = "cudagraph") -> dict[str, Any]:
    """M2F (triton core where available): one ``mode`` runner's output equals the eager forward (1e-4), both
    under ``precision_context("fp32")`` (TF32 off: torch's default TF32 convolutions differ by ~0.1 here)."""
    import torch

    from bench.runners import make_runner, precision_context

    backend = "triton" if device.type == "cuda" else "pytorch"
    model = build(["encoder=m2f", f"msda_backend={backend}"], size, device)
    log = StateLog(model)
    x = torch.rand(1, 3, *size, device=device) * 255
    with torch.no_grad(), precision_context("fp32", device):
        eager = model(x, postprocess=False)["pred_masks"].clone()
    eager_states = log.take()
    run, _ = make_runner(model, x, {"device": device, "precision": "fp32", "mode": mode}, False)
    got = run()["pred_masks"]
    runner_states = log.take()
    return {"mode": mode, "equal": bool(torch.allclose(got, eager, atol=1e-4, rtol=1e-4)),
            "max_abs_diff": float((got - eager).abs().max()),
            "same_precision": uniform(eager_states, runner_states),
            "eager_state": eager_states[:1], "runner_state": runner_states[:1]}


def backends_diff(encoder: str, device: Any, size: tuple[int, int]) -> dict[str, Any]:
    """Max |pred_masks(triton) - pred_masks(pytorch)| with the same weights, both under fp32 settings."""
    import torch

    from bench.runners import precision_context

    x = torch.rand(1, 3, *size, device=device) * 255
    outs, states = [], []
    for backend in ("pytorch", "triton"):
        model = build([f"encoder={encoder}", f"msda_backend={backend}"], size, device)
        log = StateLog(model)
        with torch.no_grad(), precision_context("fp32", device):
            outs.append(model(x, postprocess=False)["pred_masks"])
        states.append(log.take())
    return {"max_abs_diff": float((outs[0] - outs[1]).abs().max()), "same_precision": uniform(*states)}


def flops_check(size: tuple[int, int], device: Any) -> bool | dict:
    """R50 (BatchNorm: cudnn on CUDA) FLOP columns identical on CPU and on ``device``: True, or the differences."""
    import torch

    from bench.flops import count_flops

    size = (size[0] // 2, size[1] // 2)
    model = build(["encoder=m2f"], size, "cpu")
    x = torch.rand(1, 3, *size) * 255
    cpu = count_flops(model, x)
    other = count_flops(model.to(device), x.to(device))
    keys = ("gmacs_total", "gflops_total", "gflops_backbone", "gflops_pixel_decoder")
    diff = {k: (cpu[k], other[k]) for k in keys if not math.isclose(cpu[k], other[k], rel_tol=1e-9)}
    return diff or True
