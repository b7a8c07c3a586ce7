"""Per-layer profiling (``measure=profile``): torch.profiler with named ranges, traces and a layer table.

Ranges are opened by forward hooks (models know nothing of measurement): one per stage and
sub-stage, one per encoder layer (or RT-M2F block) and one per decoder sub-layer. Outputs, under
``<job dir>/profile/``: ``trace.json.gz`` (Chrome trace, opens in Perfetto), ``tb/`` (TensorBoard
trace directory), ``layers.csv`` and ``layers.md``: per range the time per iteration (CUDA time on
GPU, CPU time otherwise), its share of the whole model, its MACs, the achieved TFLOP/s and the
roofline columns of ``bench.roofline`` (minimum MB moved, floor ms at the measured peaks, whether
compute or memory bounds it, the achieved fraction of that floor); ``operators.csv`` and
``operators.md``: per operator, its calls and self time per iteration and its share.
Profiling never runs inside a timed or energy window: the job runs it last.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.autograd.profiler import record_function

from bench.flops import flops_by_path, stage_paths
from bench.roofline import measure_ceilings, min_bytes_by_path, roofline_table
from models.stages import STAGES


def profile_ranges(model: nn.Module) -> dict[str, str]:
    """Range name -> module path: stages, sub-stages, encoder layers/blocks, decoder sub-layers."""
    paths = stage_paths(model)
    ranges = dict(paths)
    enc_path = paths["pixel_decoder_layers"]
    encoder = model.get_submodule(enc_path)
    if isinstance(getattr(encoder, "layers", None), nn.ModuleList) and len(encoder.layers):
        for i in range(len(encoder.layers)):
            ranges[f"pixel_decoder.layer{i:02d}"] = f"{enc_path}.layers.{i}"
    else:
        for name, _ in encoder.named_children():
            ranges[f"pixel_decoder.{name}"] = f"{enc_path}.{name}"
    dec_path = paths["transformer_decoder"]
    decoder = model.get_submodule(dec_path)
    kinds = (("cross_attn", "transformer_cross_attention_layers"),
             ("self_attn", "transformer_self_attention_layers"), ("ffn", "transformer_ffn_layers"))
    for i in range(len(getattr(decoder, kinds[0][1], []))):
        for kind, attr in kinds:
            ranges[f"transformer_decoder.layer{i}.{kind}"] = f"{dec_path}.{attr}.{i}"
    return ranges


class RangeHooks:
    """Opens a ``record_function`` range around each named module's forward."""

    def __init__(self, model: nn.Module, ranges: Mapping[str, str]) -> None:
        self.handles, self.open = [], {}
        for name, path in ranges.items():
            mod = model.get_submodule(path)
            self.handles.append(mod.register_forward_pre_hook(self._enter(name)))
            self.handles.append(mod.register_forward_hook(self._exit(name)))

    def _enter(self, name: str) -> Callable:
        def hook(module, args):
            self.open[name] = record_function(name).__enter__()
        return hook

    def _exit(self, name: str) -> Callable:
        def hook(module, args, output):
            self.open.pop(name).__exit__(None, None, None)
        return hook

    def __enter__(self) -> RangeHooks:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


def range_times_ms(prof: Any, names: set[str], cuda: bool, iters: int) -> dict[str, float]:
    """Per-iteration time of each range: GPU span of its annotation on CUDA (or, where the trace has
    no device-side annotation, the kernel time inside the range), CPU span otherwise."""
    totals: dict[str, float] = dict.fromkeys(names, 0.0)
    kernels: dict[str, float] = dict.fromkeys(names, 0.0)
    for evt in prof.events():
        if evt.name not in totals:
            continue
        on_device = evt.device_type == torch.autograd.DeviceType.CUDA
        if on_device == cuda:
            totals[evt.name] += (evt.device_time if on_device else evt.cpu_time) / 1e3
        elif cuda:
            kernels[evt.name] += evt.device_time_total / 1e3
    return {k: (totals[k] or kernels[k]) / iters for k in names}


def layer_table(times: Mapping[str, float], flops: Mapping[str, float], ranges: Mapping[str, str],
                time_kind: str, nbytes: Mapping[str, int] | None = None,
                ceilings: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per range: time, share of the model total, G-MACs, achieved TFLOP/s and, with bytes and
    ceilings, the roofline columns (minimum MB moved, floor ms, bound, achieved fraction of the floor)."""
    total = sum(times[s] for s in STAGES if s in times)
    rows = []
    for name, path in ranges.items():
        t, f = times.get(name, float("nan")), flops.get(path, 0.0)
        row = {"range": name, "module": path, f"{time_kind}_time_ms": t, "share": t / total if total else
               float("nan"), "gmacs": f / 2e9, "achieved_tflops": f / (t * 1e9) if t > 0 else float("nan")}
        if nbytes is not None and ceilings is not None:
            row.update(roofline_table({path: f}, {path: nbytes.get(path, 0)}, {path: t}, ceilings)[path])
        rows.append(row)
    return pd.DataFrame(rows)


def profile_model(model: nn.Module, fn: Callable[[], Any], out_dir: Path, warmup: int = 3, active: int = 3,
                  device: torch.device | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Profile ``fn`` (one model call) and write the trace, TensorBoard directory and layer tables."""
    import os
    import socket
    import time

    from torch.profiler import ProfilerActivity, profile, schedule

    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    out_dir = Path(out_dir) / "profile"
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "tb").mkdir(parents=True)
    ranges = profile_ranges(model)
    flops = flops_by_path(model, fn)
    nbytes = min_bytes_by_path(model, ranges, fn)
    ceilings = measure_ceilings(device.type, precision)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trace_json = out_dir / "trace.json"

    def ready(prof: Any) -> None:  # a trace can be saved once: save it, then copy it for TensorBoard
        prof.export_chrome_trace(str(trace_json))
        tb_name = f"{socket.gethostname()}_{os.getpid()}.{int(time.time() * 1000)}.pt.trace.json"
        shutil.copyfile(trace_json, out_dir / "tb" / tb_name)

    with RangeHooks(model, ranges), torch.no_grad(), profile(
            activities=activities, record_shapes=True, with_stack=False,
            schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1), on_trace_ready=ready) as prof:
        for _ in range(warmup + active):
            fn()
            if cuda:
                torch.cuda.synchronize()
            prof.step()
    with trace_json.open("rb") as src, gzip.open(out_dir / "trace.json.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace_json.unlink()
    kind = "cuda" if cuda else "cpu"
    table = layer_table(range_times_ms(prof, set(ranges), cuda, active), flops, ranges, kind, nbytes, ceilings)
    table.to_csv(out_dir / "layers.csv", index=False)
    (out_dir / "layers.md").write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")
    ops = operator_table(prof, cuda, active, set(ranges))
    ops.to_csv(out_dir / "operators.csv", index=False)
    (out_dir / "operators.md").write_text(ops.head(OPERATORS_SHOWN).to_markdown(index=False, floatfmt=".3f") + "\n")
    return {"profile_dir": str(out_dir), "trace": str(out_dir / "trace.json.gz"), "tensorboard": str(out_dir / "tb"),
            "layers_csv": str(out_dir / "layers.csv"), "layers_md": str(out_dir / "layers.md"),
            "operators_csv": str(out_dir / "operators.csv"), "operators_md": str(out_dir / "operators.md"),
            "ranges": len(ranges)}


OPERATORS_SHOWN = 30  # rows of operators.md (operators.csv has them all)


def operator_table(prof: Any, cuda: bool, iters: int, ranges: set[str]) -> pd.DataFrame:
    """One row per operator (aten op, Triton or custom kernel): calls and self time per iteration (device
    time on CUDA, CPU time otherwise) and its share, slowest first: where the time goes, whichever layer
    calls it (grid sampling, the deformable-attention hot spot, shows here)."""
    kind = "cuda" if cuda else "cpu"
    rows = []
    for evt in prof.key_averages():
        self_us = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        if evt.key in ranges or evt.key.startswith("ProfilerStep") or self_us <= 0:
            continue
        rows.append({"operator": evt.key, "calls": evt.count / iters, f"{kind}_self_ms": self_us / 1e3 / iters})
    table = pd.DataFrame(rows, columns=["operator", "calls", f"{kind}_self_ms"])
    table = table.sort_values(f"{kind}_self_ms", ascending=False, ignore_index=True)
    table["share"] = table[f"{kind}_self_ms"] / table[f"{kind}_self_ms"].sum()
    return table
