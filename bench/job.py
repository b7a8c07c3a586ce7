"""One measurement job: a composed config -> one result row (printed, and written as result.json).

The job validates its settings once (``JobSettings``), builds the model, and runs the requested
measures (``bench.measures``) in their order; a failure anywhere becomes the row's status.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bench import energy
from bench.env import capture
from bench.fingerprint import code_changed, code_fingerprint
from bench.locks import FileLock, LockHeld, gpu_lock_path
from bench.measures import INVALID, JobContext, ordered, timed_names
from bench.row import STAGES, config_hash, new_row, to_json
from bench.runners import make_runner
from bench.settings import InvalidConfig, JobSettings, check_model, measured_config
from models.encoders import variant_name
from models.encoders.analytic import NoAnalyticModel, pixel_decoder_macs

log = logging.getLogger("bench")
GPU_WAIT_S = 600.0
_held: list[FileLock] = []  # the GPU lock, held until the job process exits
code_fingerprint()  # the code this process imported (models are imported above): what its rows carry


def fill_config_columns(row: dict[str, Any], cfg: Mapping[str, Any]) -> None:
    """Config columns straight from the config (also for rows whose config is invalid)."""
    inp, enc = cfg.get("input") or {}, cfg.get("encoder") or {}
    measure = cfg.get("measure")
    row.update(encoder=enc.get("name"), variant=variant_name(enc) if "name" in enc else None,
               backbone=(cfg.get("backbone") or {}).get("name"), dataset=inp.get("name"), height=inp.get("height"),
               width=inp.get("width"), batch=inp.get("batch"), precision=cfg.get("precision"), mode=cfg.get("mode"),
               device=cfg.get("device"), msda_backend=cfg.get("msda_backend", "pytorch"), sweep=cfg.get("sweep"),
               force_fp32=bool(enc.get("force_fp32", True)),
               measure=",".join(map(str, measure)) if isinstance(measure, list | tuple) else measure)


def run_job(cfg: Mapping[str, Any], out_dir: Path | str) -> dict[str, Any]:
    """Measure one configuration; never raises for a measurement failure (the row says what failed)."""
    row = new_row()
    out_dir = Path(out_dir)
    try:
        cfg = resolved(cfg)
        fill_config_columns(row, cfg)
        settings = JobSettings.from_config(cfg)
        check_model(cfg)  # every knob, before anything is measured
        check_out_dir(out_dir)  # a measurement that cannot be written is not started
        ctx = prepare(cfg, settings, row, out_dir)
        for m in ordered(settings.measures):
            log.info("%s ...", m.name)  # progress on stderr: a CPU job can take minutes
            started = time.perf_counter()
            columns = m.run(ctx)
            log.info("%s: %.1f s", m.name, time.perf_counter() - started)
            invalid(row, columns.pop(INVALID, []))
            row.update(columns)
    except InvalidConfig as err:
        row.update(status="invalid", error=str(err), valid=False, invalid_reason=str(err))
        if not row["config_hash"]:  # keyed by the raw config (the measured one could not be resolved)
            raw = cfg if isinstance(cfg, dict) else to_dict_unresolved(cfg)
            row["config_hash"] = config_hash({k: v for k, v in raw.items() if k not in ("out_dir", "sweep", "seed")})
    except torch.OutOfMemoryError as err:
        row.update(status="oom", error=f"OutOfMemoryError: {err}"[:2000], valid=False)
    except Exception as err:  # a failed job is a row, not a crash: the sweep goes on
        log.error("job failed:\n%s", traceback.format_exc())
        row.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000], valid=False)
    changed = code_changed() if row["status"] == "ok" else None
    if changed:  # a re-run measures the new code; these numbers are kept in result.json, marked failed
        row.update(status="failed", error=changed, valid=False)
    try:
        write_row(row, out_dir)
    except OSError as err:  # only an invalid out_dir gets here (checked before measuring): the row is printed
        log.error("cannot write %s: %s", out_dir / "result.json", err)
    return row


def resolved(cfg: Any) -> dict[str, Any]:
    """The plain config; an interpolation that does not resolve is ``InvalidConfig``."""
    from bench.config import ConfigError, to_dict

    try:
        return to_dict(cfg)
    except ConfigError as err:
        raise InvalidConfig(str(err)) from None


def to_dict_unresolved(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False) if hasattr(cfg, "_metadata") else dict(cfg)


def check_out_dir(out_dir: Path) -> None:
    """The job's output directory can be created and written, or ``InvalidConfig`` says why."""
    from bench.store import writable_dir

    try:
        writable_dir(out_dir)
    except OSError as err:
        raise InvalidConfig(f"out_dir={out_dir} cannot be written ({err.strerror or err}); name a writable "
                            "folder") from None


def prepare(cfg: dict[str, Any], settings: JobSettings, row: dict[str, Any], out_dir: Path) -> JobContext:
    """Identity and environment columns, the idle baseline (before any load), the model, its input,
    parameters and analytic MACs; the memoised runners."""
    from models import build_model

    device = settings.device
    row.update(device=device.type, measure=",".join(settings.measures),
               msda_backend=settings.msda_backend)  # the backend that ran, not the one asked for
    row["config_hash"] = config_hash(measured_config(cfg, device))
    hold_gpu(device, settings.measures)
    nvml, nvml_reason = energy.load_nvml() if device.type == "cuda" else (None, None)
    gpu = energy.open_meter(nvml, nvml_reason, device, settings.energy, "energy" in settings.measures, row)
    row.update(capture(device, gpu.meter and gpu.meter.nvml, gpu.meter and gpu.meter.handle))
    row.pop("hostname", None)
    torch.manual_seed(settings.seed)
    try:
        model = build_model(cfg).to(device)
    except (ValueError, KeyError) as err:  # bad names or knobs: the message lists the valid ones
        raise InvalidConfig(str(err)) from err
    row.update(params_of(model))
    inp = cfg["input"]
    images = torch.rand(inp["batch"], 3, inp["height"], inp["width"], device=device) * 255
    row["gmacs_analytic_pixel_decoder"] = analytic_gmacs(cfg, model)

    @functools.cache
    def runner(postprocess: bool, mode: str) -> tuple[Callable[[], Any], dict[str, float]]:
        """One runner per (post-processing, mode): compiled or captured once per job."""
        return make_runner(model, images, settings.with_mode(mode), postprocess)

    return JobContext(cfg, settings, model, images, row, runner, gpu, out_dir)


def hold_gpu(device: torch.device, measures: tuple[str, ...]) -> None:
    """Take the machine-wide lock of this GPU for a timed job (waits up to ``GPU_WAIT_S`` for another
    encbench job, from any results directory, to finish); a job that cannot have it fails, untimed."""
    if device.type != "cuda" or not timed_names() & set(measures) or _held:
        return
    key = str(torch.cuda.get_device_properties(device).uuid)
    lock = FileLock(gpu_lock_path(key), f"GPU {torch.cuda.get_device_name(device)} ({key})")
    try:
        lock.acquire(wait=0)
    except LockHeld as err:
        log.warning("%s; waiting up to %.0f s", err, GPU_WAIT_S)
        try:
            lock.acquire(wait=GPU_WAIT_S)
        except LockHeld as again:
            raise RuntimeError(f"timed jobs never share a GPU: {again}") from None
    _held.append(lock)


def analytic_gmacs(cfg: Mapping[str, Any], model: torch.nn.Module) -> float:
    """The analytic pixel-decoder G-MACs; NaN for an encoder without an analytic model."""
    inp = cfg["input"]
    try:
        macs = pixel_decoder_macs(cfg["encoder"], model.backbone.out_channels, inp["height"], inp["width"],
                                  inp["batch"])
    except NoAnalyticModel as err:  # a new encoder without a formula: the job goes on
        log.info("%s", err)
        return float("nan")
    return macs["pixel_decoder"] / 1e9


def invalid(row: dict[str, Any], reasons: list[str]) -> None:
    """Mark ``row`` invalid for ``reasons`` (appended to any earlier ones)."""
    if reasons:
        row["valid"] = False
        row["invalid_reason"] = "; ".join(filter(None, [row.get("invalid_reason"), *reasons]))


def params_of(model: torch.nn.Module) -> dict[str, int]:
    stages = model.stage_modules()
    out = {"params_total": sum(p.numel() for p in model.parameters())}
    out.update({f"params_{s}": sum(p.numel() for p in stages[s].parameters()) for s in STAGES})
    return out


def write_row(row: Mapping[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "result.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(to_json(row) + "\n")
    tmp.replace(path)  # atomic: a collector never reads half a row
    return path
