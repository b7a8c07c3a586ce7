"""The fast-path benchmark on a GPU: the MSDA core and the pixel decoders per backend, mode and precision.

1. MSDA core, one 3-level call at Cityscapes (1024x2048: 43,008 queries and values) and COCO
   (800x1088) shapes, 8 heads x 32 channels, 4 points: ``pytorch`` vs ``triton`` in fp32, and with a
   bf16/fp16 ``value`` as the model passes it under autocast (locations and weights stay fp32); the
   kernel's error against the pytorch core on the same rounded inputs; the DRAM and L2-gathered-bytes
   floors at the measured copy bandwidth; Deformable-DETR's CUDA kernel time on an H100 for comparison.
2. Pixel decoders on fixed Swin-T features (1024x2048, batch 1): M2F and PRO-SCALE (3,3,3)+LPE
   (``--encoders`` for more) x backend x mode (eager, compile, cudagraph) x precision (fp32; bf16
   with ``force_fp32=false``), in priority order with every encoder at each step, so a budget that
   runs out leaves comparable rows: latency, output error vs fp32 eager pytorch, speed conversion.
3. transformers' Mask2Former pixel decoder on the same input (eager fp32), and each encoder's bf16
   roofline floor (FLOPs, compulsory bytes, measured matmul and copy peaks).
Writes core.csv, pixel_decoder.csv (a row as soon as it is measured) and summary.json under ``--out``;
prints the target table last. Stops starting new configurations after ``--budget`` seconds (and says so).

    python -m scripts.gpu_fast_path --out outputs/gpu_fast_path
    TRITON_INTERPRET=1 python -m scripts.gpu_fast_path --smoke --out /tmp/fp   # CPU smoke run (tests)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from bench.config import compose
from bench.precision import relative_error
from bench.roofline import floor_ms, measure_ceilings, median_ms, min_bytes_by_path, msda_floors
from bench.runners import pixel_decoder_runner
from bench.timing import StageClock
from models import build_model
from models.ops import msda_core

REPO = Path(__file__).resolve().parents[1]
# Deformable-DETR's CUDA kernel (the official Mask2Former/PRO-SCALE op) on an H100, fp32, measured once
CUDA_KERNEL_MS = {"cityscapes": 0.72, "coco": 0.29}
SHAPES = {"cityscapes": [(32, 64), (64, 128), (128, 256)], "coco": [(25, 34), (50, 68), (100, 136)],
          "smoke": [(4, 6), (8, 12)]}
ENCODERS = {"m2f": ["encoder=m2f"], "ps333": ["encoder=proscale_333"], "ps333_nolpe": ["encoder=proscale_333_nolpe"],
            "ps111": ["encoder=proscale_111"], "ps111_nolpe": ["encoder=proscale_111_nolpe"],
            "lite": ["encoder=lite_m2f"], "rt": ["encoder=rt_m2f"]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RowWriter:
    """Appends each row to a CSV as soon as it exists (a run stopped by a time limit keeps what it measured)."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []
        path.unlink(missing_ok=True)

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        with self.path.open("w", newline="") as f:  # rewritten whole: columns can grow row by row
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        return row


def core_inputs(shapes: list[tuple[int, int]], device: torch.device, m: int = 8, d: int = 32, p: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MSDA call's value, locations (some points outside the maps) and softmax weights, Lq = S."""
    s = sum(h * w for h, w in shapes)
    g = torch.Generator(device="cpu").manual_seed(0)
    value = torch.randn(1, s, m, d, generator=g).to(device)
    loc = (torch.rand(1, s, m, len(shapes), p, 2, generator=g) * 1.1 - 0.05).to(device)
    w = torch.rand(1, s, m, len(shapes), p, generator=g).softmax(-1).to(device)
    return value, loc, w


def core_call(value, shapes, loc, w, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """The core as the model calls it: under autocast a low-precision ``value`` meets fp32 locations and
    weights (the softmax and the location arithmetic stay fp32)."""
    amp = torch.autocast(value.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with amp:
        return msda_core(value.to(dtype), shapes, loc, w, backend=backend)


def core_rows(device: torch.device, shapes_names: list[str], iters: int, peak_gbs: float, warmup: int = 5,
              writer: RowWriter | None = None, dtypes: dict[str, torch.dtype] | None = None) -> list[dict]:
    """The MSDA core: pytorch vs triton with an fp32/bf16/fp16 value, at each shape set. ``kernel_rel_err``
    compares with the pytorch core on the same rounded value; ``rel_err_vs_fp32`` with the unrounded one."""
    rows = []
    for name in shapes_names:
        shapes = SHAPES[name]
        value, loc, w = core_inputs(shapes, device)
        s, (m, d), (lvl, p) = value.shape[1], value.shape[2:], loc.shape[3:5]
        ref = msda_core(value, shapes, loc, w, backend="pytorch")
        for dt_name, dt in (dtypes or DTYPES).items():
            same_inputs = msda_core(value.to(dt).float(), shapes, loc, w, backend="pytorch")
            floors = msda_floors(1, s, s, m, d, lvl, p, torch.tensor([], dtype=dt).element_size(), peak_gbs,
                                 sample_size=loc.element_size())  # locations and weights stay fp32
            for backend in ("pytorch", "triton"):
                out = core_call(value, shapes, loc, w, backend, dt)
                args = (value, shapes, loc, w, backend, dt)
                ms = median_ms(lambda a=args: core_call(*a), device, iters, warmup)
                row = {"shapes": name, "queries": s, "dtype": dt_name, "backend": backend, "ms": ms,
                       "triton_config": os.environ.get("ENCBENCH_MSDA_TRITON_CONFIG", "autotune"),
                       "max_abs_err": float((out.float() - same_inputs).abs().max()),
                       "rel_err": relative_error(out.float(), same_inputs),
                       "rel_err_vs_fp32": relative_error(out.float(), ref),
                       "cuda_kernel_ms_fp32": CUDA_KERNEL_MS.get(name, math.nan),
                       "dram_floor_ms": floors["dram_floor_ms"], "gathered_mb": floors["gathered_mb"],
                       "gathered_gbs": floors["gathered_mb"] / ms}
                rows.append(writer.add(row) if writer else row)
    return rows


# (precision, backend, mode) in priority order: the baseline, the fastest candidate, then the rest
PRIORITY = [("fp32", "pytorch", "eager"), ("bf16", "triton", "cudagraph"), ("fp32", "triton", "eager"),
            ("fp32", "triton", "cudagraph"), ("bf16", "pytorch", "eager"), ("bf16", "triton", "eager"),
            ("fp32", "pytorch", "cudagraph"), ("bf16", "pytorch", "cudagraph"), ("fp32", "triton", "compile"),
            ("bf16", "triton", "compile"), ("fp32", "pytorch", "compile"), ("bf16", "pytorch", "compile")]


def pixel_decoder_rows(device: torch.device, encoders: list[str], size: tuple[int, int], modes: list[str],
                       iters: int, budget: float, t0: float, warmup: int = 10, writer: RowWriter | None = None
                       ) -> tuple[list[dict], list[str]]:
    """Every configuration of ``PRIORITY`` (restricted to ``modes``), each for every encoder before the next."""
    from bench.config import to_dict
    from models.encoders.analytic import pixel_decoder_macs

    rows, skipped = [], []
    h, w = size
    images = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device) * 255
    refs: dict[str, torch.Tensor] = {}
    for precision, backend, mode in (c for c in PRIORITY if c[2] in modes):
        for enc in encoders:
            key = f"{enc} {backend} {mode} {precision}"
            if time.time() - t0 > budget:
                skipped.append(key)
                continue
            cfg = compose([*ENCODERS[enc], "backbone=swin_t", "input=cityscapes", f"input.height={h}",
                           f"input.width={w}", f"msda_backend={backend}",
                           f"encoder.force_fp32={str(precision == 'fp32').lower()}"])
            torch.manual_seed(0)  # the same weights for every configuration of an encoder
            model = build_model(cfg).to(device)
            macs = pixel_decoder_macs(to_dict(cfg)["encoder"], model.backbone.out_channels, h, w, 1)
            row = {"encoder": enc, "backend": backend, "mode": mode, "precision": precision,
                   "gmacs_pixel_decoder": macs["pixel_decoder"] / 1e9}
            try:
                t1 = time.time()
                run, _ = pixel_decoder_runner(model, images, {"device": device, "precision": precision, "mode": mode})
                row["setup_s"] = time.time() - t1
                row["ms"] = median_ms(run, device, iters, warmup)
                out = run().mask_features.float().clone()  # this mode's output (a graph's buffers)
                if (precision, backend, mode) == PRIORITY[0]:
                    refs[enc] = out
                row["err_vs_fp32_pytorch"] = relative_error(out, refs[enc]) if enc in refs else math.nan
                row["status"] = "ok"
            except Exception as err:  # one failed configuration must not lose the others
                row.update(status="failed", error=f"{type(err).__name__}: {err}"[:300])
            rows.append(writer.add(row) if writer else row)
            print(f"  {key}: {row.get('ms', float('nan')):.2f} ms ({row['status']})", flush=True)
            del model
            torch._dynamo.reset()
    return rows, skipped


def hf_pixel_decoder_ms(device: torch.device, size: tuple[int, int], iters: int, warmup: int = 5) -> float:
    """transformers' Mask2Former pixel decoder (Swin-T, eager fp32), timed by hooks inside its forward that
    are attached after the warm-up (warm-up calls must not enter the median)."""
    from scripts.gpu_baseline import build_hf

    hf = build_hf("swin_t", 19, device)
    x = torch.randn(1, 3, *size, device=device)
    with torch.no_grad():
        median_ms(lambda: hf(pixel_values=x), device, 1, warmup)
        with StageClock({"pd": hf.model.pixel_level_module.decoder}, device) as clock:
            median_ms(lambda: hf(pixel_values=x), device, iters, 0)
            return clock.medians_ms()["pd"]


def bf16_floor(device: torch.device, enc: str, size: tuple[int, int], ceilings: dict) -> dict[str, float]:
    """Roofline floor of one bf16 pixel decoder (force_fp32=false): FLOPs, compulsory bytes, floor ms."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.flops import flop_formulas

    h, w = size
    cfg = compose([*ENCODERS[enc], "backbone=swin_t", "input=cityscapes", f"input.height={h}", f"input.width={w}",
                   "encoder.force_fp32=false", f"msda_backend={'triton' if device.type == 'cuda' else 'pytorch'}"])
    model = build_model(cfg).to(device)
    images = torch.rand(1, 3, h, w, device=device) * 255
    fn, _ = pixel_decoder_runner(model, images, {"device": device, "precision": "bf16", "mode": "eager"})
    fcm = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with fcm:
        fn()
    total_flops = fcm.get_total_flops()
    nbytes = min_bytes_by_path(model, {"pd": "pixel_decoder"}, fn)["pixel_decoder"]
    return {"gflops": total_flops / 1e9, "mbytes_min": nbytes / 1e6,
            "floor_ms": floor_ms(total_flops, nbytes, ceilings)}


def summarize(core: list[dict], pd_rows: list[dict], hf_ms: float, floors: dict[str, dict]) -> dict[str, Any]:
    """The targets: triton core vs the CUDA kernel, PRO-SCALE's speed conversion in the fastest configuration,
    our fastest fp32 M2F vs transformers', and each encoder's fastest bf16 pixel decoder against its own floor."""
    out: dict[str, Any] = {}
    for r in core:
        if r["dtype"] == "fp32" and r["backend"] == "triton":
            out[f"core_triton_vs_cuda_kernel_{r['shapes']}"] = r["cuda_kernel_ms_fp32"] / r["ms"]
            out[f"core_triton_ms_{r['shapes']}"] = r["ms"]
    ok = [r for r in pd_rows if r.get("status") == "ok"]
    for precision in ("fp32", "bf16"):
        conv = []
        for backend in ("pytorch", "triton"):
            for mode in ("eager", "compile", "cudagraph"):
                sel = {r["encoder"]: r for r in ok if (r["backend"], r["mode"], r["precision"]) ==
                       (backend, mode, precision)}
                if "m2f" in sel and "ps333" in sel:
                    mac = 1 - sel["ps333"]["gmacs_pixel_decoder"] / sel["m2f"]["gmacs_pixel_decoder"]
                    lat = 1 - sel["ps333"]["ms"] / sel["m2f"]["ms"]
                    conv.append((sel["ps333"]["ms"], backend, mode, lat / mac))
        if conv:
            fastest = min(conv)
            out[f"ps333_conversion_fastest_{precision}"] = {"backend": fastest[1], "mode": fastest[2],
                                                            "conversion": fastest[3]}
    m2f = [r for r in ok if r["encoder"] == "m2f" and r["precision"] == "fp32"]
    if m2f and hf_ms == hf_ms:
        best = min(m2f, key=lambda r: r["ms"])
        out["m2f_fastest_fp32_vs_transformers"] = {"ms": best["ms"], "hf_ms": hf_ms, "speedup": hf_ms / best["ms"],
                                                   "backend": best["backend"], "mode": best["mode"]}
    for enc, floor in floors.items():
        bf16 = [r for r in ok if r["precision"] == "bf16" and r["encoder"] == enc]
        if bf16 and floor:
            best = min(bf16, key=lambda r: r["ms"])
            out[f"fastest_bf16_vs_floor_{enc}"] = {"ms": best["ms"], "backend": best["backend"], "mode": best["mode"],
                                                   **floor, "times_floor": best["ms"] / floor["floor_ms"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_fast_path")
    ap.add_argument("--encoders", nargs="*", default=["m2f", "ps333"], choices=sorted(ENCODERS))
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which no new configuration starts")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, eager only, on whatever device (tests)")
    args = ap.parse_args(argv)
    t0 = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    args.out.mkdir(parents=True, exist_ok=True)
    size = (64, 96) if args.smoke else (1024, 2048)
    modes = ["eager"] if args.smoke or device.type != "cuda" else ["eager", "compile", "cudagraph"]
    iters, warmup = (1, 1) if args.smoke else (args.iters, 10)
    ceilings = {p: measure_ceilings(device.type, p, *((256, 16) if args.smoke else ())) for p in ("fp32", "bf16")}
    core = core_rows(device, ["smoke"] if args.smoke else ["cityscapes", "coco"], iters, ceilings["fp32"]["peak_gbs"],
                     min(warmup, 5), RowWriter(args.out / "core.csv"))
    pd_rows, skipped = pixel_decoder_rows(device, args.encoders, size, modes, iters, args.budget, t0, warmup,
                                          RowWriter(args.out / "pixel_decoder.csv"))
    hf_ms = hf_pixel_decoder_ms(device, size, iters)
    floors = {enc: bf16_floor(device, enc, size, ceilings["bf16"]) for enc in args.encoders}
    summary = summarize(core, pd_rows, hf_ms, floors)
    summary.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                   ceilings=ceilings, skipped=skipped, seconds=time.time() - t0, size=f"{size[0]}x{size[1]}")
    import pandas as pd

    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(core)[["shapes", "dtype", "backend", "ms", "max_abs_err", "rel_err", "dram_floor_ms",
                                  "gathered_gbs"]].round(4).to_string(index=False))
        if pd_rows:
            cols = [c for c in ("encoder", "backend", "mode", "precision", "ms", "err_vs_fp32_pytorch", "status")
                    if c in pd.DataFrame(pd_rows)]
            print(pd.DataFrame(pd_rows)[cols].round(4).to_string(index=False))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("ceilings",)}, default=str))
    return summary


if __name__ == "__main__":
    main()
