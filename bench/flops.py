"""FLOP counting with three independent counters, per stage, on CPU or GPU alike.

- ``gmacs_*``: fvcore ``FlopCountAnalysis`` in the convention of Mask2Former's
  ``tools/analyze_model.py`` (one multiply-add = 1, detectron2's ignore list, grid_sampler at 4
  per output element, the traced call including post-processing). With ``count_attention`` (default)
  ``baddbmm`` and ``scaled_dot_product_attention`` get handles, as the papers' torch-1.9 era
  ``bmm`` attention was counted (docs/models.md §2.5).
- ``gflops_*``: true FLOPs (2 x MAC) from ``torch.utils.flop_counter.FlopCounterMode`` with
  formulas added for grid_sampler, upsampling, GroupNorm/LayerNorm/BatchNorm and CPU SDPA.
- ``gmacs_ptflops_total``: ptflops' ``aten`` backend (mm/bmm/addmm/conv only), in the same pass.

Every counter reports the compute ops it met without a formula (``unsupported_ops``) and a
coverage figure: counted compute-op calls / all compute-op calls. Nothing is silently zero.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import models.ops  # noqa: F401  (registers torch.ops.encbench.msda, counted below)
from models.stages import STAGES

aten = torch.ops.aten

# detectron2's FlopCountAnalysis ignore list (elementwise and data-movement ops count as 0)
D2_IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::argmax", "aten::argsort", "aten::batch_norm", "aten::constant_pad_nd",
    "aten::div", "aten::div_", "aten::exp", "aten::log2", "aten::max_pool2d", "aten::meshgrid", "aten::mul",
    "aten::mul_", "aten::neg", "aten::nonzero_numpy", "aten::reciprocal", "aten::repeat_interleave",
    "aten::rsub", "aten::sigmoid", "aten::sigmoid_", "aten::softmax", "aten::sort", "aten::sqrt", "aten::sub",
    "torchvision::nms",
)
# op names that carry arithmetic a counter should account for (the rest are elementwise/data movement)
COMPUTE_OP = re.compile(r"conv|mm\b|mm_|matmul|bmm|einsum|linear|attention|grid_sampler|upsample|norm|deform|msda")


def is_compute_op(name: str) -> bool:
    """True for ops that a FLOP counter should count (and report when it cannot)."""
    base = name.split("::")[-1].split(".")[-1] if "::" in name else name.split(".", 1)[-1]
    namespace = name.split("::")[0] if "::" in name else name.split(".")[0]
    return bool(COMPUTE_OP.search(base)) or namespace not in ("aten", "prim", "profiler")


# ---------------------------------------------------------------- fvcore (paper convention)
def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def fvcore_baddbmm(inputs: list, outputs: list) -> int:
    """baddbmm(input, b1 (B, N, M), b2 (B, M, P)): B*N*M*P MACs."""
    b, n, m = _shape(inputs[1])
    return b * n * m * _shape(inputs[2])[-1]


def fvcore_sdpa(inputs: list, outputs: list) -> int:
    """scaled_dot_product_attention(q (..., L, E), k (..., S, E), v (..., S, Ev)): QK^T + AV MACs."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def fvcore_msda(inputs: list, outputs: list) -> int:
    """encbench::msda(value (N, S, M, D), shapes, locations (N, Lq, M, L, P, 2), weights): 4 MACs per
    bilinear sample and channel, as fvcore counts the pytorch backend's grid_sample calls."""
    n, _, m, d = _shape(inputs[0])
    _, lq, _, levels, points, _ = _shape(inputs[2])
    return 4 * n * m * d * lq * levels * points


class _Flatten(nn.Module):
    """Traceable wrapper: runs the model and returns its tensors as a flat tuple (as TracingAdapter)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensors_in(self.model(*inputs)))


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested mappings, lists, tuples and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from tensors_in(v)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from tensors_in(getattr(obj, name))


def count_fvcore(model: nn.Module, inputs: tuple, stage_paths: Mapping[str, str],
                 count_attention: bool = True) -> dict[str, Any]:
    """fvcore MACs of ``model(*inputs)``: total, per stage (module attribution), unsupported ops, coverage."""
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    calls: Counter[str] = Counter()

    def counted(name: str, handle: Callable) -> Callable:
        def wrapper(inputs: list, outputs: list) -> Any:
            calls[name] += 1
            return handle(inputs, outputs)
        return wrapper

    handles = dict(_DEFAULT_SUPPORTED_OPS)
    if count_attention:
        handles.update({"aten::baddbmm": fvcore_baddbmm, "aten::scaled_dot_product_attention": fvcore_sdpa})
    handles["encbench::msda"] = fvcore_msda
    analysis = FlopCountAnalysis(_Flatten(model), tuple(inputs))
    analysis.set_op_handle(**{k: counted(k, h) for k, h in handles.items()})
    analysis.set_op_handle(**dict.fromkeys(D2_IGNORED_OPS))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = analysis.total()
        by_module = analysis.by_module()
    unsupported = dict(analysis.unsupported_ops())
    counted_calls = sum(calls.values())
    missed = sum(n for op, n in unsupported.items() if is_compute_op(op))
    return {
        "total": total,
        "stages": {s: by_module.get(f"model.{p}", 0) for s, p in stage_paths.items()},
        "unsupported": unsupported,
        "coverage": counted_calls / (counted_calls + missed) if counted_calls + missed else math.nan,
        "calls": counted_calls,
    }


# ---------------------------------------------------------------- FlopCounterMode (true FLOPs)
def _numel(shape: Any) -> int:
    return math.prod(shape)


def grid_sampler_flop(input_shape, grid_shape, interpolation_mode, *args, out_shape=None, **kwargs) -> int:
    """Bilinear: 4 MACs per output element (fvcore's convention) = 8 FLOPs; nearest 0; bicubic 16 MACs."""
    return 2 * {0: 4, 1: 0, 2: 16}.get(interpolation_mode, 4) * _numel(out_shape)


def upsample_bilinear_flop(*args, out_shape=None, **kwargs) -> int:
    return 2 * 4 * _numel(out_shape)


def upsample_nearest_flop(*args, out_shape=None, **kwargs) -> int:
    return 0  # a copy: no arithmetic (fvcore counts 1 "flop" per output element)


def layer_norm_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * 5 * _numel(input_shape)  # fvcore: 5 MACs per element with affine


def batch_norm_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(input_shape)  # eval-mode affine: one multiply-add per element


def sdpa_cpu_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and AV: 2 FLOPs per MAC (CPU SDPA has no formula in torch 2.13, pytorch #195460)."""
    batch = _numel(q_shape[:-2])
    return 2 * batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def msda_flop(value_shape, spatial_shapes, loc_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """The fused MSDA core: what the grid_sample path is counted as (8 FLOPs per sample and channel)."""
    n, _, m, d = value_shape
    return 2 * 4 * n * m * d * loc_shape[1] * loc_shape[3] * loc_shape[4]


# The inference forwards an eval-mode norm layer dispatches to: CPU (native_*), CUDA (cudnn_batch_norm),
# ROCm (miopen_batch_norm), and the functional/export forms. Each has a formula, so CPU and GPU counts agree.
NORM_FORWARD_OPS = (aten.native_batch_norm, aten._native_batch_norm_legit_no_training, aten._batch_norm_no_update,
                    aten.cudnn_batch_norm, aten.miopen_batch_norm, aten.native_layer_norm, aten.native_group_norm)


def flop_formulas() -> dict:
    """Formulas added to FlopCounterMode's registry (skipped where torch already has one)."""
    from torch.utils.flop_counter import flop_registry

    extra = {aten.grid_sampler_2d: grid_sampler_flop, aten.upsample_bilinear2d: upsample_bilinear_flop,
             aten.upsample_nearest2d: upsample_nearest_flop, aten.native_layer_norm: layer_norm_flop,
             aten.native_group_norm: layer_norm_flop,
             aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu_flop}
    extra.update({op: batch_norm_flop for op in NORM_FORWARD_OPS if "batch_norm" in str(op)})
    out = {k: v for k, v in extra.items() if k not in flop_registry}
    out[torch.ops.encbench.msda] = msda_flop  # registered by models.ops
    return out


class OpCensus(TorchDispatchMode):
    """Counts every op call that reaches it (placed under FlopCounterMode: sees its leaf ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_dispatch(model: nn.Module, inputs: tuple, stage_paths: Mapping[str, str], root: str
                   ) -> dict[str, Any]:
    """One ``model(*inputs)`` under ptflops' aten mode, an op census and FlopCounterMode (innermost)."""
    from ptflops.aten_engine import FlopCounterMode as PtflopsMode

    formulas = flop_formulas()
    fcm = FlopCounterMode(display=False, custom_mapping=formulas)
    census = OpCensus()
    ptflops_mode = PtflopsMode(verbose=False)
    with torch.no_grad(), ptflops_mode, census, fcm:
        model(*inputs)
    counts = fcm.get_flop_counts()
    registry = set(fcm.flop_registry)
    compute = {op: n for op, n in census.calls.items() if is_compute_op(op)}
    registered_names = {str(k) for k in registry}
    unsupported = {op: n for op, n in compute.items() if op not in registered_names}
    counted = sum(n for op, n in compute.items() if op in registered_names)
    ptflops_names = {str(k) for k in ptflops_mode.all_ops}
    return {
        "total": fcm.get_total_flops(),
        "stages": {s: sum(counts.get(f"{root}.{p}", {}).values()) for s, p in stage_paths.items()},
        "unsupported": unsupported,
        "coverage": counted / sum(compute.values()) if compute else math.nan,
        "ptflops_total": ptflops_mode.complexity,
        "ptflops_unsupported": {op: n for op, n in compute.items() if op not in ptflops_names},
    }


def flops_by_path(model: nn.Module, fn: Callable[[], Any]) -> dict[str, float]:
    """True FLOPs per module path (FlopCounterMode with encbench's formulas) for one call of ``fn``."""
    fcm = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with torch.no_grad(), fcm:
        fn()
    root = type(model).__name__
    return {name[len(root) + 1:]: float(sum(ops.values())) for name, ops in fcm.get_flop_counts().items()
            if name.startswith(root + ".")}



# ---------------------------------------------------------------- the job's FLOP columns
TOP_STAGES = STAGES


def stage_paths(model: nn.Module) -> dict[str, str]:
    """Stage name -> dotted module path inside ``model`` (from ``model.stage_modules()``)."""
    names = {id(m): n for n, m in model.named_modules()}
    return {stage: names[id(mod)] for stage, mod in model.stage_modules().items()}


class _Call(nn.Module):
    """Traceable call of ``module`` with the tensors of captured arguments as inputs (others constant)."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.module, self.args, self.kwargs = module, args, kwargs
        self.tensors = [t for t in tensors_in((args, kwargs))]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(tensors)

        def swap(obj: Any) -> Any:
            if isinstance(obj, torch.Tensor):
                return next(it)
            if isinstance(obj, Mapping):
                return {k: swap(v) for k, v in obj.items()}
            if isinstance(obj, list | tuple):
                return type(obj)(swap(v) for v in obj)
            if hasattr(obj, "__dataclass_fields__"):  # in the order tensors_in visits them
                return dataclasses.replace(obj, **{f: swap(getattr(obj, f)) for f in obj.__dataclass_fields__})
            return obj

        args, kwargs = swap(self.args), swap(self.kwargs)
        return tuple(tensors_in(self.module(*args, **kwargs)))


def _signature(obj: Any) -> Any:
    """Shapes, dtypes and constants of captured arguments: what a stage's FLOPs depend on."""
    if isinstance(obj, torch.Tensor):
        return ["tensor", list(obj.shape), str(obj.dtype)]
    if isinstance(obj, Mapping):
        return {str(k): _signature(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_signature(v) for v in obj]
    return obj


class FlopCache:
    """fvcore results per stage, on disk, keyed by the stage's config and input signature."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def key(self, *parts: Any) -> str:
        """The entry's key: its parts and the code fingerprint (new code or libraries never reuse a count)."""
        from bench.fingerprint import code_fingerprint

        blob = json.dumps([parts, code_fingerprint()], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, key: str) -> dict | None:
        path = self.dir / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, value: dict) -> None:
        path = self.dir / f"{key}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)


def capture_stage_inputs(model: nn.Module, stages: Mapping[str, str]) -> tuple[dict, list]:
    """Forward pre-hooks that record each top stage's (args, kwargs); returns (store, handles)."""
    store: dict[str, tuple] = {}
    handles = []
    for stage in TOP_STAGES:
        mod = model.get_submodule(stages[stage])
        handles.append(mod.register_forward_pre_hook(
            lambda m, args, kwargs, stage=stage: store.setdefault(stage, (args, kwargs)), with_kwargs=True))
    return store, handles


def count_flops(model: nn.Module, images: torch.Tensor, count_attention: bool = True,
                cache: FlopCache | None = None, stage_keys: Mapping[str, Any] | None = None,
                memory: Callable[[Callable[[], Any]], dict] | None = None) -> dict[str, Any]:
    """All FLOP columns for one forward of ``model(images)`` (with post-processing).

    One real forward runs under FlopCounterMode, ptflops and the op census (and, when ``memory``
    is given, inside that memory probe), capturing each stage's inputs. fvcore then traces each
    stage on its captured inputs; with a ``cache``, a stage already traced for the same
    ``stage_keys[stage]`` and input signature is reused (the backbone, decoder and post-processing
    are shared by every encoder variant of a sweep).
    """
    start = time.perf_counter()
    paths = stage_paths(model)
    captured, handles = capture_stage_inputs(model, paths)
    out: dict[str, Any] = {}
    try:
        def forward() -> None:
            out["dp"] = count_dispatch(model, (images,), paths, root=type(model).__name__)

        mem = memory(forward) if memory is not None else forward()  # forward() returns None
    finally:
        for h in handles:
            h.remove()
    dp = out["dp"]
    fv_total, fv_stages, fv_unsupported, calls, missed = 0.0, {}, Counter(), 0, 0
    for stage in TOP_STAGES:
        args, kwargs = captured[stage]
        key = cache.key(stage, (stage_keys or {}).get(stage), _signature((args, kwargs)), count_attention) \
            if cache else None
        result = cache.get(key) if cache else None
        if result is None:
            module = model.get_submodule(paths[stage])
            sub = {s: p[len(paths[stage]) + 1:] for s, p in paths.items()
                   if p.startswith(paths[stage] + ".")}
            call = _Call(module, args, kwargs)
            fv = count_fvcore(call, tuple(call.tensors), {s: f"module.{p}" for s, p in sub.items()},
                              count_attention)
            compute_unsupported = sum(n for op, n in fv["unsupported"].items() if is_compute_op(op))
            result = {"total": fv["total"], "stages": fv["stages"], "unsupported": fv["unsupported"],
                      "calls": fv["calls"], "missed": compute_unsupported}
            if cache:
                cache.put(key, result)
        fv_total += result["total"]
        fv_stages[stage] = result["total"]
        fv_stages.update(result["stages"])
        fv_unsupported.update(result["unsupported"])
        calls += result["calls"]
        missed += result["missed"]
    row: dict[str, Any] = {"gmacs_total": fv_total / 1e9, "gflops_total": dp["total"] / 1e9,
                           "gmacs_ptflops_total": (dp["ptflops_total"] or 0) / 1e9,
                           "flop_coverage": dp["coverage"],
                           "flop_coverage_fvcore": calls / (calls + missed) if calls + missed else math.nan,
                           "unsupported_ops": {"fvcore": dict(fv_unsupported), "flop_counter": dp["unsupported"],
                                               "ptflops": dp["ptflops_unsupported"]}}
    for stage in paths:
        row[f"gmacs_{stage}"] = fv_stages[stage] / 1e9
        row[f"gflops_{stage}"] = dp["stages"][stage] / 1e9
    row["flops_seconds"] = time.perf_counter() - start
    if mem is not None:
        row.update(mem)
    return row
