"""Roofline: the floor time of a stage or layer on the measured machine, and how close a run gets.

For one module call: FLOPs (FlopCounterMode with encbench's formulas) and the *minimum bytes
moved* (every distinct input and output tensor and every parameter and buffer read or written
once: compulsory traffic, no re-reads of intermediates). The two ceilings are measured once per
process on the job's device and precision: a large matmul (peak FLOP/s) and a large device copy
(peak bytes/s, read + write). Floor = max(FLOPs / peak FLOP/s, bytes / peak bytes/s); achieved
fraction = floor / measured time (1.0 = at the roofline).

For the MSDA core, ``msda_floors`` gives two analytic floors: DRAM bytes (value, locations, weights
read once, output written once) and the bytes a kernel gathers through L2 (4 bilinear taps per
point, level, head and channel of every query).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bench.flops import tensors_in
from bench.timing import IterationClock

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def median_ms(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Median synchronised time of ``fn`` (CUDA events on GPU) after ``warmup`` calls."""
    clock = IterationClock(device)
    for _ in range(warmup):
        clock(fn)
    return statistics.median(clock(fn)[0] for _ in range(iters))


@functools.cache
def measure_ceilings(device_type: str, precision: str = "fp32", size: int | None = None,
                     copy_mb: int | None = None) -> dict[str, float]:
    """Peak matmul TFLOP/s (at ``precision``; TF32 on only for tf32) and copy GB/s (read + write)."""
    device = torch.device(device_type)
    cuda = device.type == "cuda"
    size = size or (8192 if cuda else 1024)
    copy_mb = copy_mb or (1024 if cuda else 256)
    dtype = DTYPES[precision]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        mats = [torch.randn(size, size, device=device).to(dtype) for _ in range(2)]
        mm_ms = median_ms(lambda: torch.mm(*mats), device, 10 if cuda else 5)
        src = torch.empty(copy_mb * 2**20 // 4, device=device)
        dst = torch.empty_like(src)
        copy_ms = median_ms(lambda: dst.copy_(src), device, 10 if cuda else 5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return {"peak_tflops": 2 * size**3 / (mm_ms * 1e9), "peak_gbs": 2 * src.numel() * 4 / (copy_ms * 1e6)}


def floor_ms(flops: float, nbytes: float, ceilings: Mapping[str, float]) -> float:
    """max(compute time, memory time) in ms at the measured peaks."""
    return max(flops / (ceilings["peak_tflops"] * 1e9), nbytes / (ceilings["peak_gbs"] * 1e6))


def _nbytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of distinct storages (a view of an input is not read twice)."""
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        if t.device.type == "meta":
            seen[(id(t), 0)] = t.numel() * t.element_size()
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return sum(seen.values())


def min_bytes_by_path(model: nn.Module, paths: Mapping[str, str], fn: Callable[[], Any]) -> dict[str, int]:
    """Compulsory bytes of each module call: distinct inputs + outputs + its parameters and buffers."""
    totals = dict.fromkeys(paths.values(), 0)
    handles = []

    def hook(path: str) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            state = list(module.parameters()) + list(module.buffers())
            totals[path] += _nbytes(iter([*tensors_in(args), *tensors_in(kwargs), *tensors_in(output), *state]))
        return record

    for path in set(paths.values()):
        handles.append(model.get_submodule(path).register_forward_hook(hook(path), with_kwargs=True))
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return totals


def roofline_table(flops: Mapping[str, float], nbytes: Mapping[str, int], times_ms: Mapping[str, float],
                   ceilings: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per key: MB moved at least, floor ms, bound (compute|memory), achieved fraction of the roofline."""
    out = {}
    for key, f in flops.items():
        b = nbytes.get(key, 0)
        floor = floor_ms(f, b, ceilings)
        t = times_ms.get(key, math.nan)
        compute = f / (ceilings["peak_tflops"] * 1e9) >= b / (ceilings["peak_gbs"] * 1e6)
        out[key] = {"mbytes_min": b / 1e6, "floor_ms": floor, "bound": "compute" if compute else "memory",
                    "roofline_frac": floor / t if t and t > 0 else math.nan}
    return out


def msda_floors(n: int, n_queries: int, n_values: int, heads: int, channels: int, levels: int, points: int,
                element_size: int = 4, peak_gbs: float | None = None, sample_size: int = 4) -> dict[str, float]:
    """Analytic MSDA-core floors: DRAM bytes (each tensor once) and L2-gathered bytes (4 taps per sample).
    ``element_size`` is the value's (and output's) bytes per element; ``sample_size`` the locations' and
    weights' (fp32 under autocast, whatever the value's precision)."""
    samples = n * n_queries * heads * levels * points
    dram = (n * n_values * heads * channels * element_size  # value read
            + samples * 3 * sample_size                     # locations (x, y) and weights read
            + n * n_queries * heads * channels * element_size)  # output written
    gathered = 4 * samples * channels * element_size
    out = {"dram_mb": dram / 1e6, "gathered_mb": gathered / 1e6}
    if peak_gbs:
        out.update(dram_floor_ms=dram / (peak_gbs * 1e6), gathered_floor_ms_at_dram_bw=gathered / (peak_gbs * 1e6))
    return out
