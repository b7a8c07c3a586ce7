"""The steps of a GPU validation run that run jobs: the result rows through ``python -m bench`` (each in
a fresh process, into the run's results store, resumable), and the checkpoint-evaluation path on synthetic
COCO-format images. ``scripts.gpu_validate`` runs them in its priority order under its deadline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scripts.gpu_validate import Validation


# ---------------------------------------------------------------- 3. jobs (and 6. extras)
def job_overrides(v: Validation) -> list[tuple[str, list[str]]]:
    """The headline rows, most important first: M2F and PRO-SCALE (3,3,3)+LPE eager fp32 with energy, both
    in the fastest configuration, and M2F again (the repeat spread)."""
    base, lat, lat_e, energy, fastest = _job_parts(v)
    return [("m2f", [*base, "encoder=m2f", lat_e, *energy]),
            ("ps333", [*base, "encoder=proscale_333", lat_e, *energy]),
            ("m2f_fastest", [*base, "encoder=m2f", lat, *fastest]),
            ("ps333_fastest", [*base, "encoder=proscale_333", lat, *fastest]),
            ("m2f_again", [*base, "encoder=m2f", lat, "seed=1"])]


def more_job_overrides(v: Validation) -> list[tuple[str, list[str]]]:
    """The other encoders, eager fp32, for the reference rows."""
    base, lat, *_ = _job_parts(v)
    return [(name, [*base, f"encoder={enc}", lat]) for name, enc in (
        ("ps111", "proscale_111"), ("lite_m2f", "lite_m2f"), ("rt_m2f", "rt_m2f"))]


def _job_parts(v: Validation) -> tuple[list[str], str, str, list[str], list[str]]:
    """Swin-T 1024x2048 batch 1 on the run's device (tiny in a rehearsal): base overrides, the latency and
    latency+energy measures, short energy settings with the idle power measured once, the fastest mode."""
    size = ["input.height=64", "input.width=96"] if v.smoke else []
    idle = v.summary.get("environment", {}).get("idle_w")
    energy = ["energy.min_seconds=5", "energy.idle_seconds=3", "energy.cooldown_seconds=1",
              *([f"energy.idle_w={idle:.3f}"] if isinstance(idle, float) and idle == idle else [])]
    # a rehearsal keeps the pytorch core in its jobs: the interpreter takes minutes per timed forward (the
    # triton core's arithmetic is checked in ``correctness``); CUDA graphs need CUDA
    fastest = (["msda_backend=pytorch", "mode=eager", "precision=bf16", "encoder.force_fp32=false"] if v.smoke else
               ["msda_backend=triton", "mode=cudagraph", "precision=bf16", "encoder.force_fp32=false"])
    base = ["backbone=swin_t", "input=cityscapes", "input.batch=1", f"device={v.device.type}", *size]
    return base, "measure=[latency,memory]", "measure=[latency,memory,energy]", energy, fastest


def extra_overrides(v: Validation) -> list[tuple[str, list[str]]]:
    size = ["input.height=64", "input.width=96"] if v.smoke else []
    base = ["backbone=swin_t", "input.batch=1", f"device={v.device.type}", "measure=[latency,memory]", *size]
    compile_ = ["mode=compile", "msda_backend=triton" if not v.smoke else "msda_backend=pytorch"]
    return [(f"{e}_compile", [*base, "input=cityscapes", f"encoder={e}", *compile_]) for e in ("m2f", "proscale_333")
            ] + [(f"{e}_batch8", [*base, "input=cityscapes", f"encoder={e}", "input.batch=8"])
                 for e in ("m2f", "proscale_333")
            ] + [(f"{e}_coco", [*base, "input=coco", f"encoder={e}"]) for e in ("m2f", "proscale_333")]


def timing_overrides(smoke: bool) -> list[str]:
    """Short but honest timing: warm-up to stability, then at least 2 s (a few iterations in a rehearsal)."""
    if smoke:
        return ["timing.min_iters=2", "timing.min_seconds=0", "timing.warmup_min_seconds=0", "timing.warmup_window=1",
                "timing.warmup_tolerance=10", "timing.stage_iters=1", "timing.e2e=false", "timing.bootstrap=100",
                "timing.pixel_decoder_alone=true"]
    return ["timing.min_iters=20", "timing.min_seconds=2", "timing.warmup_min_seconds=1",
            "timing.warmup_max_seconds=15", "timing.stage_iters=10",
            "timing.busy_iters=3", "timing.e2e=false", "timing.bootstrap=1000"]


def run_jobs(v: Validation, named: list[tuple[str, list[str]]], job_s: float) -> dict:
    """Each job in a fresh process, into the store; configurations already measured are not run again."""
    named = [(n, o) for n, o in named if not v.only or n in v.only]
    from bench.store import ResultStore
    from bench.sweep import attempt_dir, make_job, run_one

    results = v.out / "results"
    out: dict[str, Any] = {}
    rows = v.summary.setdefault("rows", {})
    with ResultStore(results / "results.sqlite") as store:
        for name, overrides in named:
            job = make_job(["sweep=gpu_validate", *overrides, *timing_overrides(v.smoke)])
            if store.status(job.config_hash) == "ok":
                out[name] = "already measured"
                rows[name] = brief(store_row(store, job.config_hash))
                continue
            if v.remaining() < job_s:
                out[name] = f"skipped: deadline ({v.remaining():.0f} s left)"
                continue
            print(f"  job {name}: {job.label}", file=sys.stderr, flush=True)
            attempt = attempt_dir(results / "runs", job)
            row = run_one(job, attempt, results / "flops_cache", timeout=max(v.remaining() - 5, 10))
            row["config_hash"] = row.get("config_hash") or job.config_hash
            store.add(row, str(attempt / "result.json"))
            out[name] = row.get("status") if row.get("status") == "ok" else f"{row.get('status')}: {row.get('error')}"
            rows[name] = brief(row)
            v.write()
    return out


def store_row(store: Any, config_hash: str) -> dict:
    return next(r for r in store.rows() if r.get("config_hash") == config_hash)


BRIEF = ("status", "variant", "precision", "mode", "msda_backend", "latency_ms_p50", "latency_ms_ci95",
         "latency_ms_pixel_decoder_alone_p50", "latency_ms_pixel_decoder_p50", "gmacs_analytic_pixel_decoder",
         "mem_peak_alloc_mb", "energy_j_per_img_gross", "energy_j_per_img_net", "idle_w", "power_w_avg",
         "sm_clock_mhz_min_busy", "sm_clock_mhz_max", "throttle_reasons", "valid", "invalid_reason", "error")


def brief(row: dict) -> dict:
    return {k: row.get(k) for k in BRIEF}


# ---------------------------------------------------------------- 7. checkpoint evaluation
def synthetic_coco(root: Path, n: int, size: tuple[int, int]) -> Path:
    """A COCO panoptic layout of ``n`` random images (133 categories, four rectangular segments each):
    the evaluation pipeline's input where no dataset is at hand (accuracy is meaningless here)."""
    import numpy as np
    from PIL import Image

    from bench.evaluate.panoptic import id2rgb

    h, w = size
    for d in ("val2017", "panoptic_val2017", "annotations"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val2017" / f"{i:012d}.jpg")
        ids = np.zeros((h, w), np.int32)
        segments = []
        for k, (cat, box) in enumerate(((1, (0, 0)), (3, (0, 1)), (100, (1, 0)), (120, (1, 1))), start=1):
            ids[box[0] * h // 2:(box[0] + 1) * h // 2, box[1] * w // 2:(box[1] + 1) * w // 2] = k
            segments.append({"id": k, "category_id": cat, "iscrowd": 0, "area": int((ids == k).sum())})
        Image.fromarray(id2rgb(ids)).save(root / "panoptic_val2017" / f"{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w})
        anns.append({"image_id": i, "file_name": f"{i:012d}.png", "segments_info": segments})
    cats = [{"id": c, "name": f"c{c}", "isthing": int(c <= 80)} for c in range(1, 134)]
    (root / "annotations" / "panoptic_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def evaluate(v: Validation) -> dict:
    """python -m bench.evaluate's path on this device (random weights, R50, synthetic COCO-size images):
    per-image time of the model with post-processing and of the metric engines, fp32 and bf16."""
    from omegaconf import OmegaConf

    from bench.config import compose
    from bench.evaluate.__main__ import run

    root = synthetic_coco(v.out / "eval_data", 2 if v.smoke else 6, (48, 64) if v.smoke else (480, 640))
    data = OmegaConf.to_container(compose(["data=coco_panoptic", f"data.root={root}"]
                                          + (["data.min_size=0"] if v.smoke else []), "evaluate"), resolve=True)["data"]
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = {"checkpoint": "random", "predictions": None, "model": ["backbone=r50"], "data": data, "limit": None,
               "device": v.device.type, "precision": precision, "msda_backend": "pytorch", "workers": 2, "warmup": 1,
               "dump_predictions": False, "results": None}
        metrics = run(cfg, v.out / f"evaluate_{precision}")
        timing = json.loads((v.out / f"evaluate_{precision}" / "timing.json").read_text())
        out[precision] = {"images": metrics["images"], **{k: timing[k] for k in (
            "timed_images", "s_per_img", "compute_s_per_img", "compute_s_min", "compute_s_max", "evaluate_s_per_img",
            "data_s_per_img", "metric_compute_s", "peak_memory_mb", "device_name")}}
        v.summary["evaluate"] = out
        v.write()
    return out
