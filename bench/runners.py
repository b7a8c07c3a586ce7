"""Runners: one timed iteration of the model (or of its pixel decoder alone) in the job's mode and precision.

``eager`` calls the model under ``inference_mode``; ``compile`` runs ``torch.compile`` once (timed in
``compile_seconds``); ``cudagraph`` captures one call at fixed shapes and replays it. Every runner
returns the call's outputs (for a graph: its static output buffers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from bench.timing import IterationClock

log = logging.getLogger("bench")
Runner = Callable[[bool, str], tuple[Callable[[], Any], dict[str, float]]]


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """Set TF32 flags and return the autocast context for ``precision``."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_runner(model: torch.nn.Module, images: torch.Tensor, settings: Mapping[str, Any], postprocess: bool
                ) -> tuple[Callable[[], Any], dict[str, float]]:
    """The callable that one timed iteration of the whole model runs, for the configured mode and precision."""
    if postprocess and settings["mode"] == "cudagraph":
        log.warning("mode=cudagraph replays the forward only; post-processing is not captured")
    return mode_runner(model, lambda m, x: m(x, postprocess=postprocess and settings["mode"] != "cudagraph"),
                       images, settings)


def pixel_decoder_runner(model: torch.nn.Module, images: torch.Tensor, settings: Mapping[str, Any]
                         ) -> tuple[Callable[[], Any], dict[str, float]]:
    """The pixel decoder alone on fixed backbone features, in the configured mode and precision."""
    with torch.no_grad(), precision_context(settings["precision"], settings["device"]):
        features = model.backbone(model.preprocess(images))
    return mode_runner(model.pixel_decoder, lambda m, f: m(f), features, settings)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    return {k: v.clone() for k, v in obj.items()} if isinstance(obj, Mapping) else obj


def mode_runner(module: torch.nn.Module, call: Callable[[Any, Any], Any], inputs: Any, settings: Mapping[str, Any]
                ) -> tuple[Callable[[], Any], dict[str, float]]:
    """``call(module, inputs)`` as one iteration: eager, ``torch.compile``d (compiled here, once, timed in
    ``compile_seconds``) or captured into a CUDA graph at fixed shapes and replayed. Every mode's runner
    returns the call's outputs (for a graph: its static output buffers)."""
    device, info = settings["device"], {}
    amp = precision_context(settings["precision"], device)
    if settings["mode"] == "eager":
        def eager() -> Any:
            with torch.inference_mode(), amp:
                return call(module, inputs)

        return eager, info
    if settings["mode"] == "compile":
        # hitting dynamo's recompile limit would fall back to eager silently: a compile row must fail instead
        if "fail_on_recompile_limit_hit" in torch._dynamo.config._config:
            torch._dynamo.config.fail_on_recompile_limit_hit = True
        compiled = torch.compile(module)

        def run() -> Any:
            with torch.no_grad(), amp:
                return call(compiled, inputs)

        t0 = time.perf_counter()
        run()
        IterationClock(device).sync()
        info["compile_seconds"] = time.perf_counter() - t0
        return run, info
    # cudagraph: warm up on a side stream, capture one call at fixed shapes, replay it
    static = _clone(inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad(), amp:
        for _ in range(3):
            call(module, static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad(), amp:
        captured = call(module, static)

    def replay() -> Any:
        graph.replay()
        return captured  # the graph's output buffers, refreshed by each replay

    return replay, info


def dynamo_graphs() -> int:
    """Graphs dynamo has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def dynamo_graph_breaks() -> int:
    """Graph breaks dynamo has met in this process (all reasons)."""
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))
