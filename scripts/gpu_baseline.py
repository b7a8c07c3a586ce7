"""Baseline check: our Mask2Former vs transformers' Mask2Former, same input, same run.

Times the forward pass (no post-processing) of both models, random weights, batch 1, and the
per-stage split (backbone, pixel decoder, transformer decoder) from CUDA events recorded by
forward hooks; prints a short table last and writes JSON to ``--out``. Default: Swin-T,
1024x2048, fp32, median of 20 after warm-up, on CUDA. ``--device cpu`` runs the same code with
``perf_counter`` (used by the test suite at a tiny size).

    python -m scripts.gpu_baseline                      # on a GPU
    python -m scripts.gpu_baseline --device cpu --height 256 --width 384 --iters 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench.config import compose
from bench.timing import IterationClock, StageClock
from models import build_model
from models.stages import FORWARD_STAGES

SWIN = {"swin_t": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)}


def time_forward(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Per-iteration latency (ms) of ``fn`` after ``warmup`` calls (bench.timing's synchronised clock)."""
    clock = IterationClock(device)
    for _ in range(warmup):
        fn()
    clock.sync()
    return [clock(fn)[0] for _ in range(iters)]


def build_hf(backbone: str, num_labels: int, device: torch.device) -> nn.Module:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    cfg = Mask2FormerConfig(backbone_config=SwinConfig(**SWIN[backbone], out_features=stages),
                            num_labels=num_labels, num_queries=100)
    return Mask2FormerForUniversalSegmentation(cfg).eval().to(device)


def measure(name: str, model: nn.Module, run: Callable, stages: dict[str, nn.Module], device: torch.device,
            iters: int, warmup: int) -> dict:
    with torch.no_grad():
        lat = time_forward(run, device, iters, warmup)
        clock = StageClock({"model": model, **stages}, device)
        time_forward(run, device, iters, 0)
        per_stage = clock.medians_ms()
        clock.remove()
    p50 = statistics.median(lat)
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "latency_ms_p50": p50,
            "latency_ms_min": min(lat), "latency_ms_max": max(lat),
            **{f"latency_ms_{k}_p50": v for k, v in per_stage.items()},
            # share within the hooked pass: stages and the whole model timed in the same calls
            "pixel_decoder_share": per_stage["pixel_decoder"] / per_stage["model"]}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="swin_t", choices=sorted(SWIN))
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)

    cfg = compose([f"backbone={args.backbone}", "input=cityscapes", f"input.height={args.height}",
                   f"input.width={args.width}"])
    ours = build_model(cfg).to(device)
    hf = build_hf(args.backbone, cfg.input.num_classes, device)
    images = torch.rand(1, 3, args.height, args.width, device=device) * 255
    pixel_values = ours.preprocess(images)

    rows = [
        measure("encbench", ours, lambda: ours(images, postprocess=False),
                {k: v for k, v in ours.stage_modules().items() if k in FORWARD_STAGES},
                device, args.iters, args.warmup),
        measure("transformers", hf, lambda: hf(pixel_values=pixel_values),
                {"backbone": hf.model.pixel_level_module.encoder, "pixel_decoder": hf.model.pixel_level_module.decoder,
                 "transformer_decoder": hf.model.transformer_module}, device, args.iters, args.warmup),
    ]
    with torch.no_grad():
        e2e = time_forward(lambda: ours(images), device, max(args.iters // 2, 1), 1)
    rows[0]["latency_ms_e2e_p50"] = statistics.median(e2e)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "size": f"{args.height}x{args.width}", "precision": "fp32", "batch": 1, "iters": args.iters}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(f"# {env['device']}  torch {env['torch']}  {args.backbone} {env['size']} fp32 batch 1, "
          f"median of {args.iters}")
    print(f"{'model':<13}{'params':>11}{'p50 ms':>9}{'backbone':>10}{'pix.dec':>9}{'share':>7}{'decoder':>9}")
    for r in rows:
        print(f"{r['model']:<13}{r['params'] / 1e6:>10.2f}M{r['latency_ms_p50']:>9.1f}"
              f"{r['latency_ms_backbone_p50']:>10.1f}{r['latency_ms_pixel_decoder_p50']:>9.1f}"
              f"{r['pixel_decoder_share']:>7.0%}{r['latency_ms_transformer_decoder_p50']:>9.1f}")
    ratio = rows[0]["latency_ms_p50"] / rows[1]["latency_ms_p50"]
    print(f"encbench / transformers forward latency: {ratio:.3f}; encbench with post-processing: "
          f"{rows[0]['latency_ms_e2e_p50']:.1f} ms")
    return rows


if __name__ == "__main__":
    main()
