"""One measurement job: a composed config -> one result row (printed, and written as result.json)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from bench import energy as energy_mod
from bench.env import capture
from bench.flops import FlopCache, count_flops
from bench.memory import peak_memory
from bench.row import STAGES, TIMED_STAGES, config_hash, new_row, to_json
from bench.timing import IterationClock, TimingConfig, gpu_busy_ms, stage_latencies, summarize, time_loop, warm_up
from models.encoders import variant_name
from models.encoders.analytic import NoAnalyticModel, pixel_decoder_macs

log = logging.getLogger("bench")

MEASURES = ("flops", "latency", "memory", "energy", "error", "roofline", "profile")
ALL = ("flops", "latency", "memory", "energy", "error")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("eager", "compile", "cudagraph")


class InvalidConfig(ValueError):
    """A bad override: the message names the valid choices."""


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise InvalidConfig(f"{key}={value!r} is not valid; valid choices: {', '.join(valid)}")
    return value


AUTO_CPU = ("flops", "memory", "error")


def parse_measures(value: Any, device: torch.device | None = None) -> list[str]:
    """``measure`` as a list: a name, ``all``, ``auto`` (all on CUDA; flops+memory+error on CPU), a list,
    or a comma-separated string."""
    items = list(value) if isinstance(value, list | tuple) else str(value).split(",")
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if item == "auto":
            expanded = ALL if device is not None and device.type == "cuda" else AUTO_CPU
        else:
            expanded = ALL if item == "all" else (item,)
        for m in expanded:
            _choice("measure", m, (*MEASURES, "all", "auto"))
            if m not in out:
                out.append(m)
    if not out:
        raise InvalidConfig(f"measure is empty; valid choices: {', '.join((*MEASURES, 'all', 'auto'))}")
    return out


def resolve_device(value: str) -> torch.device:
    _choice("device", value, DEVICES)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cuda" and not torch.cuda.is_available():
        raise InvalidConfig("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(value)


def validate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check the measurement keys; returns the resolved settings."""
    device = resolve_device(cfg.get("device", "auto"))
    settings = {"measures": parse_measures(cfg.get("measure", "flops"), device), "device": device,
                "precision": _choice("precision", cfg.get("precision", "fp32"), PRECISIONS),
                "mode": _choice("mode", cfg.get("mode", "eager"), MODES),
                "timing": _timing(cfg.get("timing")),
                "msda_backend": _msda_backend(cfg.get("msda_backend", "pytorch"), device)}
    if settings["mode"] == "cudagraph" and settings["device"].type != "cuda":
        raise InvalidConfig("mode=cudagraph needs device=cuda (CUDA-graph replay)")
    if "energy" in settings["measures"] and settings["device"].type != "cuda" and cfg.get("measure") != "all":
        log.warning("measure=energy on %s: energy columns will be NaN", settings["device"])
    return settings


def _msda_backend(name: str, device: torch.device) -> str:
    """The MSDA backend that runs on ``device`` (``auto`` resolved); unknown or unavailable -> invalid."""
    from models.ops import resolve_msda_backend

    try:
        return resolve_msda_backend(str(name), device)
    except (KeyError, RuntimeError) as err:
        raise InvalidConfig(str(err)) from err


def _timing(value: Any) -> TimingConfig:
    try:
        return TimingConfig.from_mapping(value)
    except (TypeError, ValueError) as err:
        raise InvalidConfig(str(err)) from err


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """Set TF32 flags and return the autocast context for ``precision``."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def measured_config(cfg: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The part of the config that defines what is measured (the ``config_hash`` input)."""
    keep = ("backbone", "encoder", "decoder", "input", "msda_backend", "precision", "mode", "flops", "timing",
            "energy")
    out = {k: cfg.get(k) for k in keep}
    out["flops"] = {k: v for k, v in (cfg.get("flops") or {}).items() if k != "cache_dir"}  # where, not what
    out["measure"] = parse_measures(cfg.get("measure", "flops"), device)
    out["device"] = device.type
    return out


def make_runner(model: torch.nn.Module, images: torch.Tensor, settings: dict[str, Any], postprocess: bool
                ) -> tuple[Callable[[], Any], dict[str, float]]:
    """The callable that one timed iteration of the whole model runs, for the configured mode and precision."""
    if postprocess and settings["mode"] == "cudagraph":
        log.warning("mode=cudagraph replays the forward only; post-processing is not captured")
    return mode_runner(model, lambda m, x: m(x, postprocess=postprocess and settings["mode"] != "cudagraph"),
                       images, settings)


def pixel_decoder_runner(model: torch.nn.Module, images: torch.Tensor, settings: dict[str, Any]
                         ) -> tuple[Callable[[], Any], dict[str, float]]:
    """The pixel decoder alone on fixed backbone features, in the configured mode and precision."""
    with torch.no_grad(), precision_context(settings["precision"], settings["device"]):
        features = model.backbone(model.preprocess(images))
    return mode_runner(model.pixel_decoder, lambda m, f: m(f), features, settings)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    return {k: v.clone() for k, v in obj.items()} if isinstance(obj, Mapping) else obj


def mode_runner(module: torch.nn.Module, call: Callable[[Any, Any], Any], inputs: Any, settings: dict[str, Any]
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
        import time

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


Runner = Callable[[bool, str], tuple[Callable[[], Any], dict[str, float]]]


def measure_latency(model, images, settings, row: dict[str, Any], runner: Runner,
                    meter: energy_mod.EnergyMeter | None = None) -> None:
    """The timed loop (and, with a ``meter``, the GPU state sampled over it), stage times, secondary timings.
    Graph breaks are counted from the job's start (dynamo's counter is process-wide and survives resets)."""
    cfg: TimingConfig = settings["timing"]
    device, mode = settings["device"], settings["mode"]
    breaks = dynamo_graph_breaks()
    run, info = runner(False, mode)
    row.update(info)
    clock = IterationClock(device)
    warm, stable = warm_up(run, clock, cfg)
    graphs = dynamo_graphs()
    with sampled_state(meter, row, "latency"):
        gpu, wall = time_loop(run, clock, cfg)
    row.update(summarize(gpu, images.shape[0], cfg.bootstrap))
    row.update(wall_ms_p50=float(torch.tensor(wall).median()), timing_iters=len(gpu),
               timing_seconds=sum(wall) / 1e3, warmup_iters=len(warm), warmup_stable=stable)
    if mode == "compile":
        row["recompiles"] = dynamo_graphs() - graphs
        row["graph_breaks"] = dynamo_graph_breaks() - breaks
    if mode == "eager":
        stages = {s: m for s, m in model.stage_modules().items() if s in TIMED_STAGES}
        per_stage = stage_latencies(runner(True, "eager")[0], stages, device, cfg.stage_iters)
        row.update({f"latency_ms_{s}_p50": v for s, v in per_stage.items()})
    row["gpu_busy_ms"] = gpu_busy_ms(run, cfg.busy_iters) if device.type == "cuda" else math.nan
    if cfg.pixel_decoder_alone:
        alone, alone_info = pixel_decoder_runner(model, images, settings)
        if "compile_seconds" in alone_info:
            row["compile_seconds"] += alone_info["compile_seconds"]
        row["latency_ms_pixel_decoder_alone_p50"] = summarize(_short_loop(alone, clock, cfg), images.shape[0]
                                                              )["latency_ms_p50"]
    if cfg.e2e and mode != "cudagraph":
        e2e, _ = runner(True, mode)
        row["latency_ms_e2e_p50"] = summarize(_short_loop(e2e, clock, cfg), images.shape[0])["latency_ms_p50"]


def _short_loop(run: Callable[[], Any], clock: IterationClock, cfg: TimingConfig) -> list[float]:
    """A secondary timing (a fifth of the main loop's iterations and seconds) after a short warm-up."""
    short = dataclasses.replace(cfg, min_iters=max(cfg.min_iters // 5, 3), min_seconds=cfg.min_seconds / 5,
                                warmup_min_seconds=cfg.warmup_min_seconds / 5)
    warm_up(run, clock, short)
    return time_loop(run, clock, short)[0]


def measure_roofline(model: torch.nn.Module, settings: dict[str, Any], row: dict[str, Any], runner: Runner
                     ) -> None:
    """Floors of the whole forward and the pixel decoder at the measured peaks, and the achieved fractions
    (against ``latency_ms_p50`` and the pixel decoder's time, when latency was measured in this job)."""
    from bench.flops import stage_paths
    from bench.profile import flops_by_path
    from bench.roofline import measure_ceilings, min_bytes_by_path, roofline_table

    device = settings["device"]
    ceilings = measure_ceilings(device.type, settings["precision"])
    fn = runner(False, "eager")[0]
    stages = stage_paths(model)
    paths = {"total": "", "pixel_decoder": stages["pixel_decoder"]}
    by_path = flops_by_path(model, fn)
    flops = {"total": sum(by_path.get(stages[s], 0.0) for s in ("backbone", "pixel_decoder", "transformer_decoder")),
             "pixel_decoder": by_path.get(stages["pixel_decoder"], 0.0)}
    nbytes = min_bytes_by_path(model, paths, fn)
    pd_ms = row.get("latency_ms_pixel_decoder_alone_p50")
    if not pd_ms or math.isnan(pd_ms):
        pd_ms = row.get("latency_ms_pixel_decoder_p50", math.nan)
    table = roofline_table(flops, {k: nbytes[p] for k, p in paths.items()},
                           {"total": row.get("latency_ms_p50", math.nan), "pixel_decoder": pd_ms}, ceilings)
    row.update(peak_tflops=ceilings["peak_tflops"], peak_gbs=ceilings["peak_gbs"])
    for key, vals in table.items():
        row.update({f"mbytes_min_{key}": vals["mbytes_min"], f"floor_ms_{key}": vals["floor_ms"],
                    f"roofline_frac_{key}": vals["roofline_frac"]})


@contextmanager
def sampled_state(meter: energy_mod.EnergyMeter | None, row: dict[str, Any], window: str) -> Iterator[None]:
    """Sample the GPU state (clocks, temperature, clock events) over a timed window into ``row``; a window whose
    clock dropped makes the row invalid. Nothing without a meter; a failing NVML never fails the window."""
    if meter is None:
        yield
        return
    sampler = energy_mod.Sampler(meter.nvml, meter.handle, meter.sample_period)
    with sampler:
        yield
    state = sampler.summary()
    row.update({k: state[k] for k in energy_mod.STATE_COLUMNS}, gpu_state_window=window)
    invalid(row, energy_mod.window_validity(state, energy_mod.max_sm_clock(meter.nvml, meter.handle)))


def invalid(row: dict[str, Any], reasons: list[str]) -> None:
    """Mark ``row`` invalid for ``reasons`` (appended to any earlier ones)."""
    if reasons:
        row["valid"] = False
        row["invalid_reason"] = "; ".join(filter(None, [row.get("invalid_reason"), *reasons]))


@dataclasses.dataclass
class GPUMeter:
    """The job's NVML meter (None with the reason when there is none) and the idle baseline."""

    meter: energy_mod.EnergyMeter | None
    reason: str | None = None
    idle_w: float = math.nan


def open_meter(nvml: Any, nvml_reason: str | None, device: torch.device, ecfg: Mapping[str, Any],
               want_idle: bool, row: dict[str, Any]) -> GPUMeter:
    """The NVML meter of the job's CUDA device (matched by UUID) and, when energy is measured, the idle
    power: ``energy.idle_w`` or a baseline taken now, before the job loads the GPU."""
    if device.type != "cuda":
        return GPUMeter(None, "no CUDA device (NVML energy needs a GPU)")
    if nvml is None:
        return GPUMeter(None, nvml_reason or "NVML unavailable")
    index = ecfg.get("gpu_index")
    try:
        handle, how = energy_mod.nvml_handle(nvml, energy_mod.cuda_uuid(device),
                                             None if index is None else int(index))
        row["nvml_device"] = how
        meter = energy_mod.EnergyMeter(nvml, handle, sample_period=float(ecfg.get("sample_period", 0.1)))
        if not want_idle:
            return GPUMeter(meter)
        idle = ecfg.get("idle_w")
        idle_w = float(idle) if idle is not None else meter.idle_power(float(ecfg.get("idle_seconds", 3.0)),
                                                                        float(ecfg.get("cooldown_seconds", 2.0)))
        return GPUMeter(meter, idle_w=idle_w)
    except energy_mod.nvml_error(nvml) as err:
        return GPUMeter(None, f"NVML failed: {type(err).__name__}: {err}")


def measure_energy(images, settings, cfg: Mapping[str, Any], row: dict[str, Any], runner: Runner,
                   gpu: GPUMeter) -> None:
    """Energy per image over a window of at least ``energy.min_seconds``; NaN with the reason when NVML fails."""
    if gpu.meter is None:
        row.update(energy_mod.unavailable(gpu.reason or "NVML unavailable"))
        return
    ecfg = dict(cfg.get("energy") or {})
    run, _ = runner(False, settings["mode"])
    clock = IterationClock(settings["device"])
    warm_up(run, clock, settings["timing"])
    try:
        result = gpu.meter.window(run, images.shape[0], ecfg.get("min_seconds", 10.0), clock.sync, gpu.idle_w)
    except energy_mod.nvml_error(gpu.meter.nvml) as err:
        row.update(energy_mod.unavailable(f"NVML failed during the window: {type(err).__name__}: {err}"))
        return
    reason = result.pop("invalid_reason")
    result.pop("valid")
    result.pop("power_w_max_sampled", None)
    row.update(result, gpu_state_window="energy")
    invalid(row, [reason] if reason else [])


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
    from bench.config import to_dict
    from models import build_model

    cfg = to_dict(cfg)
    row = new_row()
    out_dir = Path(out_dir)
    fill_config_columns(row, cfg)
    try:
        settings = validate(cfg)
        row.update(device=settings["device"].type, measure=",".join(settings["measures"]),
                   msda_backend=settings["msda_backend"])  # the backend that ran, not the one asked for
        row["config_hash"] = config_hash(measured_config(cfg, settings["device"]))
        device = settings["device"]
        nvml, nvml_reason = energy_mod.load_nvml() if device.type == "cuda" else (None, None)
        measures = settings["measures"]
        gpu = open_meter(nvml, nvml_reason, device, cfg.get("energy") or {}, "energy" in measures, row)
        row.update(capture(device, gpu.meter and gpu.meter.nvml, gpu.meter and gpu.meter.handle))
        row.pop("hostname", None)
        torch.manual_seed(int(cfg.get("seed", 0)))
        try:
            model = build_model(cfg).to(device)
        except (ValueError, KeyError) as err:  # bad names or knobs: the message lists the valid ones
            raise InvalidConfig(str(err)) from err
        row.update(params_of(model))
        inp = cfg["input"]
        images = torch.rand(inp["batch"], 3, inp["height"], inp["width"], device=device) * 255
        try:
            analytic = pixel_decoder_macs(cfg["encoder"], model.backbone.out_channels, inp["height"], inp["width"],
                                          inp["batch"])
            row["gmacs_analytic_pixel_decoder"] = analytic["pixel_decoder"] / 1e9
        except NoAnalyticModel as err:  # a new encoder without a formula: NaN, the job goes on
            log.info("%s", err)

        @functools.cache
        def runner(postprocess: bool, mode: str) -> tuple[Callable[[], Any], dict[str, float]]:
            """One runner per (post-processing, mode): compiled or captured once per job."""
            return make_runner(model, images, {**settings, "mode": mode}, postprocess)

        fcfg = cfg.get("flops") or {}
        cache = FlopCache(fcfg["cache_dir"]) if fcfg.get("cache_dir") else None
        # memory first (the CPU RSS peak is only meaningful on the first forward of the process); with
        # flops on CPU the counting forward is that forward (the counters hold no tensors)
        shared = "flops" in measures and "memory" in measures and device.type == "cpu"
        if "memory" in measures and not shared:  # one inference: forward + post-processing, on every device
            row.update(peak_memory(runner(True, "eager")[0], device))
        if "flops" in measures:
            row.update(count_flops(model, images, bool(fcfg.get("count_attention", True)), cache,
                                   stage_keys(cfg), (lambda fn: peak_memory(fn, device)) if shared else None))
        if "error" in measures:  # switches the TF32 flags for its fp32 reference, then restores the job's
            from bench.precision import output_error

            row.update(output_error(model, images, settings["precision"], precision_context))
        if "latency" in measures:
            measure_latency(model, images, settings, row, runner, gpu.meter)
        if "roofline" in measures:
            measure_roofline(model, settings, row, runner)
        if "energy" in measures:
            measure_energy(images, settings, cfg, row, runner, gpu)
        if "profile" in measures:
            from bench.profile import profile_model

            pcfg = cfg.get("profile") or {}
            row["artifacts"] = profile_model(model, runner(True, "eager")[0], out_dir, int(pcfg.get("warmup", 3)),
                                             int(pcfg.get("active", 3)), device, settings["precision"])
    except InvalidConfig as err:
        row.update(status="invalid", error=str(err), valid=False, invalid_reason=str(err))
        if not row["config_hash"]:  # keyed by the raw config (the measured one could not be resolved)
            row["config_hash"] = config_hash({k: v for k, v in cfg.items() if k not in ("out_dir", "sweep", "seed")})
    except torch.OutOfMemoryError as err:
        row.update(status="oom", error=f"OutOfMemoryError: {err}"[:2000], valid=False)
    except Exception as err:  # a failed job is a row, not a crash: the sweep goes on
        log.error("job failed:\n%s", traceback.format_exc())
        row.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000], valid=False)
    write_row(row, out_dir)
    return row


def stage_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What each stage's FLOPs depend on besides its input shapes (the FLOP cache keys)."""
    inp = cfg["input"]
    post = {k: inp.get(k) for k in ("num_classes", "tasks", "thing_ids", "topk_per_image")}
    return {"backbone": cfg["backbone"], "pixel_decoder": [cfg["encoder"], cfg["backbone"]["name"]],
            "transformer_decoder": cfg["decoder"], "postprocess": post}


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
