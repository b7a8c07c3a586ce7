"""GPU check of the measurement core in one command (prints a short table last).

1. Swin-T, 1024x2048, fp32, batch 1, each in a fresh ``python -m bench`` process: M2F,
   PRO-SCALE (1,1,1) and (3,3,3) with and without LPE, Lite-M2F, RT-M2F, then M2F again back to
   back: p50, per-stage latency, gpu_busy_ms, net energy per image, analytic pixel-decoder GMACs.
2. Repeatability: the two M2F rows' p50 and energy differences.
3. Harness overhead: a trivial model (one 4096x4096 fp32 matmul) timed by bench.timing vs a
   bare CUDA-event loop.

    python -m scripts.gpu_measure --out outputs/gpu_measure   # rows.csv, summary.json under --out
    python -m scripts.gpu_measure --only m2f --quick    # a fast smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "m2f": ["encoder=m2f"],
    "ps111": ["encoder=proscale_111"], "ps111_nolpe": ["encoder=proscale_111_nolpe"],
    "ps333": ["encoder=proscale_333"], "ps333_nolpe": ["encoder=proscale_333_nolpe"],
    "lite": ["encoder=lite_m2f"], "rt": ["encoder=rt_m2f"],
}
COLUMNS = ["variant", "latency_ms_p50", "latency_ms_ci95", "latency_ms_backbone_p50", "latency_ms_pixel_decoder_p50",
           "latency_ms_transformer_decoder_p50", "latency_ms_postprocess_p50", "gpu_busy_ms",
           "energy_j_per_img_net", "energy_j_per_img_gross", "power_w_avg", "gmacs_analytic_pixel_decoder",
           "sm_clock_mhz_min", "sm_clock_mhz_max", "temp_c_end", "valid", "invalid_reason", "status", "error"]


def run_job(name: str, overrides: list[str], out: Path, quick: bool) -> dict:
    job_dir = out / f"job_{name}"
    extra = ["timing.min_seconds=1", "timing.warmup_min_seconds=0.5", "energy.min_seconds=3",
             "energy.idle_seconds=1", "energy.cooldown_seconds=0.5"] if quick else []
    cmd = [sys.executable, "-m", "bench", "backbone=swin_t", "input=cityscapes", "device=cuda", "precision=fp32",
           "measure=[latency,energy]", f"out_dir={job_dir}", f"hydra.run.dir={job_dir}", *overrides, *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (out / f"{name}.log").write_text(proc.stderr[-20000:])
    try:
        row = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        row = {"variant": name, "status": "failed", "error": proc.stderr[-500:]}
    row["job_seconds"] = time.time() - t0
    return row


def harness_overhead(iters: int = 200) -> dict:
    """bench.timing's p50 vs a bare CUDA-event loop on the same trivial model."""
    import torch

    from bench.timing import IterationClock, TimingConfig, summarize, time_loop, warm_up

    a = torch.randn(4096, 4096, device="cuda")
    fn = lambda: a @ a  # noqa: E731
    cfg = TimingConfig(min_iters=iters, min_seconds=1.0)
    clock = IterationClock(torch.device("cuda"))
    warm_up(fn, clock, cfg)
    harness = summarize(time_loop(fn, clock, cfg)[0], 1)["latency_ms_p50"]
    bare = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        bare.append(s.elapsed_time(e))
    bare_p50 = statistics.median(bare)
    return {"harness_p50_ms": harness, "bare_p50_ms": bare_p50, "ratio": harness / bare_p50}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_measure")
    ap.add_argument("--only", nargs="*", default=None, help=f"subset of {list(CONFIGS)}")
    ap.add_argument("--quick", action="store_true", help="short windows (smoke run, not for reporting)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CONFIGS)
    rows = [run_job(n, CONFIGS[n], args.out, args.quick) for n in names]
    if "m2f" in names:
        rows.append(run_job("m2f_again", CONFIGS["m2f"], args.out, args.quick))
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(args.out / "rows.csv", index=False)
    summary = {"overhead": harness_overhead()}
    if "m2f" in names:
        a, b = rows[names.index("m2f")], rows[-1]
        summary["repeat"] = {k: abs(a[k] - b[k]) / a[k] for k in ("latency_ms_p50", "energy_j_per_img_net")
                             if isinstance(a.get(k), float) and isinstance(b.get(k), float)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    cols = [c for c in COLUMNS[:9] if c in df]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[cols].round(2).to_string(index=False))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
