"""Validate encbench on a GPU in one command, in priority order, under one deadline.

A first visit to a GPU machine may be short. This command establishes what matters most first and
writes each result the moment it has it, so a run cut short keeps everything it finished:

1. ``environment``: GPU name and UUID, driver, torch/CUDA/Triton versions, clocks, power limit, the
   idle board power (measured before any load) and the NVML energy counter's update period.
2. ``correctness`` (``scripts.gpu_checks``): the triton MSDA core against the pytorch core, CUDA-graph
   replay against eager, whole models across backends, FLOP counts on CPU and GPU; both sides of every
   equality under the same precision settings.
3. ``transformers``: transformers' Mask2Former and ours, same run, same input.
4. ``jobs``: the headline rows through the real job (``python -m bench``, each in a fresh process, short
   timing settings), Swin-T 1024x2048 batch 1, into a results store (a re-run resumes): fp32 eager M2F
   and PRO-SCALE (3,3,3)+LPE with energy, both in the fastest configuration (triton, CUDA graph, bf16
   pixel decoder), M2F again (repeat spread).
5. ``core_table``: the MSDA core at Cityscapes and COCO shapes, pytorch vs triton.
6. ``more_jobs``: PRO-SCALE (1,1,1)+LPE, Lite-M2F and RT-M2F, for the reference rows.
7. ``extras`` (if time remains): compile mode, batch 8, COCO size.
8. ``evaluate`` (if time remains): ``python -m bench.evaluate``'s path on the GPU (random weights, R50,
   synthetic COCO-size images), fp32 and bf16: seconds per image of the model with post-processing
   and of the metric engines.

Outputs under ``--out``: ``summary.json`` (rewritten after every step), one JSON per step,
``core.csv``, ``baseline.json``, the job directories and ``results/results.sqlite``; Triton's and
Inductor's caches go to ``--out``/cache so compiled kernels can serve a later run. The summary table
prints last. ``--plan`` prints the steps, the jobs and the Triton compilations a cold run pays, and
times those compilations ahead of time for the GPU's architecture (no GPU needed). On a lent machine
whose output folder returns only a few files, run it through ``scripts.gpu_visit``.

    python -m scripts.gpu_validate --out outputs/gpu_validate               # on a GPU machine
    python -m scripts.gpu_validate --plan                                   # on any machine
    TRITON_INTERPRET=1 python -m scripts.gpu_validate --smoke --out /tmp/v  # rehearsal on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.gpu_checks import LEVEL_SHAPES
from scripts.gpu_steps import evaluate, extra_overrides, job_overrides, more_job_overrides, run_jobs

REPO = Path(__file__).resolve().parents[1]
# priority first: the checks, the transformers baseline, the headline rows, the core table; then the rest
STEPS = ("environment", "correctness", "transformers", "jobs", "core_table", "more_jobs", "extras", "evaluate")
# one fixed kernel configuration: a cold run compiles one variant per (levels, dtypes) instead of three
TRITON_CONFIG = "32x4"
SAME_INPUT_M2F = ("m2f", "m2f_fastest", "m2f_again", "m2f_compile")
TRANSFORMERS_PD_MS_H100 = 39.3  # transformers' fp32 eager Swin-T pixel decoder at 1024x2048 on an H100


@dataclass
class Validation:
    """One run: where results go, the deadline, what each step found."""

    out: Path
    deadline: float  # time.monotonic() after which nothing new starts
    smoke: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    only: list[str] | None = None  # job names to run (default: all)
    nvml: Any = None  # an NVML module standing in for the real one (a rehearsal of the NVML path on CPU)

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cuda" if torch.cuda.is_available() and not self.smoke else "cpu")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2, default=str))
        tmp.replace(self.out / "summary.json")

    def step(self, name: str, fn: Callable[[Validation], dict], need_s: float) -> dict | None:
        """Run ``fn`` if at least ``need_s`` seconds remain; record its result (or why not) at once."""
        if self.remaining() < need_s:
            self.summary.setdefault("steps", {})[name] = {
                "status": "skipped", "reason": f"deadline: {self.remaining():.0f} s left, needs ~{need_s:.0f} s"}
            self.write()
            return None
        t0 = time.monotonic()
        print(f"[{name}] {self.remaining():.0f} s left", file=sys.stderr, flush=True)
        try:
            result, status = fn(self), "ok"
        except Exception as err:  # one failed step must not lose the others
            result, status = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}, "failed"
            print(result["traceback"], file=sys.stderr)
        seconds = time.monotonic() - t0
        self.summary.setdefault("steps", {})[name] = {"status": status, "seconds": round(seconds, 1)}
        self.summary[name] = result
        (self.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        self.write()
        return result


# ---------------------------------------------------------------- 1. environment
def environment(v: Validation) -> dict:
    """Versions, the GPU and its settings (read, never changed), idle power before any load, counter tick."""
    import torch

    from bench import energy
    from bench.env import capture

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "triton": _version("triton"),
                           "transformers": _version("transformers"), "device": str(v.device),
                           "triton_config": os.environ.get("ENCBENCH_MSDA_TRITON_CONFIG")}
    if v.device.type != "cuda" and v.nvml is None:
        return {**env, "gpu_name": None, "reason": "no CUDA device: GPU columns not measured"}
    if v.device.type == "cuda":
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    nvml, reason = (v.nvml, None) if v.nvml is not None else energy.load_nvml()
    if nvml is None:
        return {**env, **capture(v.device), "nvml": reason}
    seconds = (0.3, 0.5) if v.smoke else (1.5, 4.0)  # counter-tick poll, idle window
    try:
        return {**env, **nvml_facts(v.device, nvml, *seconds)}
    except energy.nvml_error(nvml) as err:
        return {**env, "nvml_error": f"{type(err).__name__}: {err}"}


def nvml_facts(device: Any, nvml: Any, tick_s: float, idle_s: float) -> dict[str, Any]:
    """What NVML says of the GPU before any load: as every row (name, UUID, driver, temperature, SM clock),
    the maximum SM clock, the enforced power limit, the energy counter's tick and the idle board power."""
    from bench import energy
    from bench.env import capture

    handle, matched = energy.nvml_handle(nvml, energy.cuda_uuid(device) if device.type == "cuda" else None)
    facts = {"nvml_device": matched, **capture(device, nvml, handle)}
    facts["sm_clock_mhz_max"] = energy.max_sm_clock(nvml, handle)
    facts["power_limit_w"] = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3
    facts["counter_tick_s"] = energy.counter_tick(nvml, handle, seconds=tick_s)
    facts["idle_w"] = energy.EnergyMeter(nvml, handle).idle_power(seconds=idle_s, cooldown=0.0)
    return facts


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------- 2. correctness
def correctness(v: Validation) -> dict:
    """Triton core vs pytorch core, CUDA-graph replay vs eager, models across backends, FLOPs CPU vs device
    (``scripts.gpu_checks``: both sides of every equality under the same precision settings)."""
    from scripts.gpu_checks import correctness as checks

    return checks(v.device, v.smoke)



# ---------------------------------------------------------------- 4. transformers, 5. core table
def transformers_baseline(v: Validation) -> dict:
    """Ours and transformers' Mask2Former (Swin-T, fp32 eager), same run, same input (scripts.gpu_baseline)."""
    from scripts.gpu_baseline import main as baseline

    size = ["--height", "64", "--width", "96", "--iters", "2", "--warmup", "1"] if v.smoke else [
        "--iters", "20", "--warmup", "10"]
    rows = baseline(["--device", v.device.type, *size, "--out", str(v.out / "baseline.json")])
    return {r["model"]: r for r in rows}


def core_table(v: Validation) -> dict:
    """The MSDA core at Cityscapes and COCO shapes: pytorch vs triton, fp32 and a bf16 value."""
    import torch

    from bench.roofline import measure_ceilings
    from scripts.gpu_fast_path import RowWriter, core_rows

    ceilings = measure_ceilings(v.device.type, "fp32", *((256, 16) if v.smoke else ()))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = core_rows(v.device, ["smoke"] if v.smoke else ["cityscapes", "coco"], 1 if v.smoke else 50,
                     ceilings["peak_gbs"], 1 if v.smoke else 5, RowWriter(v.out / "core.csv"), dtypes)
    return {"rows": rows, "peak_gbs": ceilings["peak_gbs"]}



# ---------------------------------------------------------------- the summary
def ratios(summary: dict) -> dict[str, Any]:
    """The numbers a first visit must bring back, as ratios within this run."""
    rows = {k: r for k, r in (summary.get("rows") or {}).items() if r.get("status") == "ok"}
    out: dict[str, Any] = {}
    for tag, m2f, ps in (("eager_fp32_pytorch", "m2f", "ps333"), ("fastest", "m2f_fastest", "ps333_fastest")):
        if m2f in rows and ps in rows:
            out[f"ps333_speed_conversion_{tag}"] = speed_conversion(rows[m2f], rows[ps])
    if "m2f" in rows and "m2f_again" in rows:
        a, b = rows["m2f"]["latency_ms_p50"], rows["m2f_again"]["latency_ms_p50"]
        out["repeat_p50_spread"] = abs(a - b) / statistics.mean([a, b])
    for name in ("m2f", "ps333"):
        if name in rows:
            out[f"{name}_energy"] = {k: rows[name].get(k) for k in ("energy_j_per_img_net", "energy_j_per_img_gross",
                                                                    "idle_w", "power_w_avg", "valid")}
    base = summary.get("transformers") or {}
    if "encbench" in base and "transformers" in base:
        ours, hf = base["encbench"], base["transformers"]
        out["m2f_vs_transformers_latency"] = ours["latency_ms_p50"] / hf["latency_ms_p50"]
        # the M2F rows at transformers' input (Swin-T 1024x2048 batch 1): not m2f_coco, m2f_batch8, ...
        pd_ms = [rows[k].get("latency_ms_pixel_decoder_alone_p50") for k in SAME_INPUT_M2F if k in rows]
        pd_ms = [x for x in pd_ms if isinstance(x, float) and x == x]
        if pd_ms:
            out["fastest_m2f_pixel_decoder_vs_transformers"] = {
                "ours_ms": min(pd_ms), "transformers_ms": hf["latency_ms_pixel_decoder_p50"],
                "speedup": hf["latency_ms_pixel_decoder_p50"] / min(pd_ms),
                "speedup_vs_h100_reference": TRANSFORMERS_PD_MS_H100 / min(pd_ms)}
    core = (summary.get("core_table") or {}).get("rows") or []
    for shapes in ("cityscapes", "smoke"):
        for dt in ("fp32", "bf16"):
            ms = {r["backend"]: r["ms"] for r in core if r["shapes"] == shapes and r["dtype"] == dt}
            if {"pytorch", "triton"} <= set(ms):
                out[f"core_{shapes}_{dt}"] = {**ms, "speedup": ms["pytorch"] / ms["triton"],
                                              "cuda_kernel_fp32_ms": 0.72}
    return out


def speed_conversion(m2f: dict, ps: dict) -> dict[str, float]:
    """Latency reduction / MAC reduction of the pixel decoder (alone) and of the whole forward, by the
    report's function (``reports.tables.speed_conversion``) on the analytic pixel-decoder MACs (these jobs
    count no FLOPs), with the 95 % interval of each latency reduction."""
    import pandas as pd

    from reports.tables import speed_conversion as conversion

    rows = pd.DataFrame([{**m2f, "encoder": "m2f", "variant": "m2f"}, {**ps, "encoder": "ps", "variant": "ps"}])
    out: dict[str, float] = {}
    for key, col in (("pixel_decoder", "latency_ms_pixel_decoder_alone_p50"), ("model", "latency_ms_p50")):
        if not all(isinstance(r.get(col), float) for r in (m2f, ps)):
            continue
        t = conversion(rows, lat=col, macs="gmacs_analytic_pixel_decoder").set_index("variant").loc["ps"]
        out.update({"mac_reduction": float(t["mac_reduction"]),
                    f"{key}_latency_reduction": float(t["latency_reduction"]),
                    f"{key}_latency_reduction_ci": [float(t["latency_reduction_low"]),
                                                    float(t["latency_reduction_high"])],
                    f"{key}_conversion": float(t["speed_conversion"])})
    return out


def print_summary(v: Validation) -> None:
    steps = v.summary.get("steps", {})
    print("\n# gpu_validate: " + ", ".join(f"{k} {s['status']}" for k, s in steps.items()))
    env = v.summary.get("environment") or {}
    print(f"# {env.get('gpu_name') or env.get('device')}  driver {env.get('driver')}  torch {env.get('torch')}  "
          f"triton {env.get('triton')}  idle {env.get('idle_w')} W  counter tick {env.get('counter_tick_s')} s")
    for name, r in (v.summary.get("rows") or {}).items():
        print(f"{name:<15}{r.get('status') or '':<8}p50 {_f(r.get('latency_ms_p50'))} ms  "
              f"pixdec {_f(r.get('latency_ms_pixel_decoder_alone_p50'))} ms  "
              f"net {_f(r.get('energy_j_per_img_net'))} J/img  {r.get('error') or ''}"[:160])
    print(json.dumps(v.summary.get("ratios", {}), default=str))


def _f(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, float) and x == x else "-"


# ---------------------------------------------------------------- planning without a GPU
def compile_plan() -> list[tuple[int, str, str]]:
    """The Triton compilations a cold run needs with the fixed configuration: (levels, value, locations)."""
    plan = [(lvl, dt, "fp32") for lvl in LEVEL_SHAPES for dt in ("fp32", "bf16")]  # correctness
    return sorted(set(plan))  # the models (3 levels) and the core table reuse these


def plan(arch: int, time_compiles: bool) -> dict:
    """Steps, jobs and compilations of a full run; with ``time_compiles``, each compiled here for sm_<arch>."""
    import torch

    from models.ops import msda_triton

    v = Validation(Path("."), math.inf)
    v.summary["environment"] = {"idle_w": math.nan}
    block_q, warps = (int(x) for x in TRITON_CONFIG.split("x"))
    compiles = []
    for levels, value_t, sample_t in compile_plan():
        entry = {"levels": levels, "value": value_t, "locations": sample_t, "config": TRITON_CONFIG}
        if time_compiles:
            t0 = time.perf_counter()
            value_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[value_t]
            msda_triton.compile_for_target(arch, levels, value_dtype, torch.float32, (block_q, warps))
            entry["seconds"] = time.perf_counter() - t0
        compiles.append(entry)
    return {"steps": list(STEPS), "jobs": [n for n, _ in job_overrides(v)],
            "more_jobs": [n for n, _ in more_job_overrides(v)],
            "extras": [n for n, _ in extra_overrides(v)], "compiles": compiles,
            "compile_seconds": sum(c.get("seconds", 0) for c in compiles)}


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scripts.gpu_validate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_validate")
    ap.add_argument("--deadline", type=float, default=420.0, help="seconds: nothing new starts after this (420)")
    ap.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS), help="a subset of the steps")
    ap.add_argument("--only", nargs="*", default=None, help="run only these jobs (names as in --plan)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: a rehearsal of every code path")
    ap.add_argument("--plan", action="store_true", help="print steps, jobs and Triton compilations; time them "
                    "ahead of time for --arch (needs TRITON_INTERPRET unset)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA architecture for --plan (90: H100/H200)")
    args = ap.parse_args(argv)
    if args.plan:
        result = plan(args.arch, time_compiles=True)
        print(json.dumps(result, indent=2))
        return result
    t_start = time.monotonic()
    sys.stdout.reconfigure(line_buffering=True)  # printed lines survive a killed run
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))  # compiled kernels travel with --out
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("ENCBENCH_MSDA_TRITON_CONFIG", TRITON_CONFIG)
    v = Validation(args.out, t_start + args.deadline, args.smoke, only=args.only)
    old = args.out / "summary.json"
    if old.exists():  # a second run resumes: keep what the first one found
        v.summary = {k: val for k, val in json.loads(old.read_text()).items() if k in ("rows", "transformers",
                                                                                       "core_table", "environment")}
    v.summary.update(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), deadline_s=args.deadline, smoke=args.smoke,
                     commit=_commit())
    # seconds a step needs to start (the job steps report stored rows at once, and check time per job)
    needs = {"environment": 5, "correctness": 20, "jobs": 1, "transformers": 25, "core_table": 15, "more_jobs": 1,
             "extras": 1, "evaluate": 40}
    job_s = 20 if args.smoke else 30
    fns = {"environment": environment, "correctness": correctness,
           "jobs": lambda v: run_jobs(v, job_overrides(v), job_s), "transformers": transformers_baseline,
           "core_table": core_table, "more_jobs": lambda v: run_jobs(v, more_job_overrides(v), job_s),
           "extras": lambda v: run_jobs(v, extra_overrides(v), 1.5 * job_s),
           "evaluate": evaluate}
    for name in STEPS:
        if name in args.steps:
            v.step(name, fns[name], needs[name])
    v.summary["ratios"] = ratios(v.summary)
    v.summary["seconds"] = round(time.monotonic() - t_start, 1)
    v.write()
    print_summary(v)
    return v.summary


def _commit() -> str | None:
    from bench.env import git_commit

    return git_commit()


if __name__ == "__main__":
    main()
