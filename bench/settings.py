"""The job's settings: one typed object, built and validated once per job from the composed config.

Every measurement knob has a type; a bad value or an unknown key raises ``InvalidConfig`` naming the
key and the valid choices, and the job becomes an ``invalid`` row.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from bench.timing import TimingConfig

log = logging.getLogger("bench")

ALL = ("flops", "latency", "memory", "energy", "error")
AUTO_CPU = ("flops", "memory", "error")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("eager", "compile", "cudagraph")


class InvalidConfig(ValueError):
    """A bad override: the message names the valid choices."""


class NeedsOtherHardware(InvalidConfig):
    """A valid setting this machine cannot run (CUDA-only options without a GPU)."""


def check_model(cfg: Mapping[str, Any]) -> None:
    """Build the model on the meta device (no memory, no time), so every knob is checked against its
    builder before anything is measured; ``InvalidConfig`` names the key and what is valid."""
    from models import build_model

    try:
        with torch.device("meta"):
            build_model({**cfg, "msda_backend": "pytorch"})
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidConfig(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)) from None


def choice(key: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise InvalidConfig(f"{key}={value!r} is not valid; valid choices: {', '.join(valid)}")
    return value


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
            choice("measure", m, (*measure_names(), "all", "auto"))
            if m not in out:
                out.append(m)
    if not out:
        raise InvalidConfig(f"measure is empty; valid choices: {', '.join((*measure_names(), 'all', 'auto'))}")
    return out


def measure_names() -> tuple[str, ...]:
    """The registered measures, in the order they run (``bench.measures``: one module each)."""
    from bench.measures import MEASURES

    return tuple(sorted(MEASURES.names(), key=lambda n: MEASURES.get(n).order))


def auto_device(value: str) -> torch.device:
    """The one place ``auto`` is decided: CUDA when a GPU is present, else the CPU; any other name as torch
    reads it (callers check what they accept)."""
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


def resolve_device(value: str) -> torch.device:
    """A job's ``device``: one of ``DEVICES``; ``cuda`` without a GPU is ``NeedsOtherHardware``."""
    choice("device", value, DEVICES)
    if value == "cuda" and not torch.cuda.is_available():
        raise NeedsOtherHardware("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return auto_device(value)


# (low, high) bounds of the numeric knobs, inclusive; None: unbounded on that side
RANGES: dict[str, tuple[float | None, float | None]] = {
    "timing.min_iters": (1, None), "timing.max_iters": (1, None), "timing.min_seconds": (0, None),
    "timing.warmup_min_seconds": (0, None), "timing.warmup_max_seconds": (0, None), "timing.warmup_window": (1, None),
    "timing.warmup_tolerance": (1e-9, None), "timing.stage_iters": (0, None), "timing.busy_iters": (0, None),
    "timing.bootstrap": (0, None), "timing.secondary": (1e-3, 1.0), "timing.contention_cores": (0, None),
    "timing.retime": (0, None),
    "energy.min_seconds": (1e-3, None), "energy.idle_seconds": (0, None), "energy.cooldown_seconds": (0, None),
    "energy.idle_w": (0, None), "energy.gpu_index": (0, None), "energy.sample_period": (1e-3, None),
    "profile.warmup": (0, None), "profile.active": (1, None),
}


def _typed(key: str, value: Any, kind: str) -> Any:
    """``value`` checked against a field's annotation (``int``, ``float``, ``bool``, ``str``, ``| None``)."""
    if value is None and "None" in kind:
        return None
    base = kind.split("|")[0].strip()
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str)}.get(base, True)
    if not ok:
        raise InvalidConfig(f"{key}={value!r} must be {kind}")
    low, high = RANGES.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
        raise InvalidConfig(f"{key}={value!r} must be {bound}")
    return float(value) if base == "float" else value


def _group(cls: type, key: str, value: Mapping[str, Any] | None) -> Any:
    """A settings group from its config mapping: known keys only, each checked against its field's type
    and range; an unknown key or a bad value names the key and what is valid."""
    value = dict(value or {})
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise InvalidConfig(f"unknown {key} option(s) {unknown}; valid: {names}")
    out = {f.name: _typed(f"{key}.{f.name}", value[f.name], str(f.type)) for f in fields(cls) if f.name in value}
    return cls(**out)


@dataclass(frozen=True)
class EnergySettings:
    min_seconds: float = 10.0
    idle_seconds: float = 3.0
    cooldown_seconds: float = 2.0
    idle_w: float | None = None
    gpu_index: int | None = None
    sample_period: float = 0.1


@dataclass(frozen=True)
class FlopSettings:
    count_attention: bool = True
    cache_dir: str | None = None


@dataclass(frozen=True)
class ProfileSettings:
    warmup: int = 3
    active: int = 3


@dataclass(frozen=True)
class JobSettings:
    """What a job measures and how (``settings["device"]`` works too, for the runner helpers)."""

    measures: tuple[str, ...]
    device: torch.device
    precision: str = "fp32"
    mode: str = "eager"
    msda_backend: str = "pytorch"
    timing: TimingConfig = field(default_factory=TimingConfig)
    energy: EnergySettings = field(default_factory=EnergySettings)
    flops: FlopSettings = field(default_factory=FlopSettings)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    seed: int = 0

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def with_mode(self, mode: str) -> JobSettings:
        return dataclasses.replace(self, mode=mode)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> JobSettings:
        """Validate the measurement keys of a composed config and resolve ``auto`` choices."""
        device = resolve_device(cfg.get("device", "auto"))
        seed = _typed("seed", cfg.get("seed", 0), "int")
        settings = cls(measures=tuple(parse_measures(cfg.get("measure", "flops"), device)), device=device,
                       precision=choice("precision", cfg.get("precision", "fp32"), PRECISIONS),
                       mode=choice("mode", cfg.get("mode", "eager"), MODES),
                       msda_backend=_msda_backend(cfg.get("msda_backend", "pytorch"), device),
                       timing=_timing(cfg.get("timing")), energy=_group(EnergySettings, "energy", cfg.get("energy")),
                       flops=_group(FlopSettings, "flops", cfg.get("flops")),
                       profile=_group(ProfileSettings, "profile", cfg.get("profile")), seed=seed)
        if settings.mode == "cudagraph" and device.type != "cuda":
            raise NeedsOtherHardware("mode=cudagraph needs device=cuda (CUDA-graph replay)")
        if "energy" in settings.measures and device.type != "cuda" and cfg.get("measure") != "all":
            log.warning("measure=energy on %s: energy columns will be NaN", device)
        return settings


def _msda_backend(name: str, device: torch.device) -> str:
    """The MSDA backend that runs on ``device`` (``auto`` resolved); unknown or unavailable -> invalid."""
    from models.ops import resolve_msda_backend

    try:
        return resolve_msda_backend(str(name), device)
    except KeyError as err:
        raise InvalidConfig(str(err.args[0]) if err.args else str(err)) from err
    except RuntimeError as err:
        raise NeedsOtherHardware(str(err)) from err


def _timing(value: Any) -> TimingConfig:
    timing = _group(TimingConfig, "timing", value)
    if timing.max_iters < timing.min_iters:
        raise InvalidConfig(f"timing.max_iters={timing.max_iters} must be >= timing.min_iters={timing.min_iters}")
    if timing.warmup_max_seconds < timing.warmup_min_seconds:
        raise InvalidConfig(f"timing.warmup_max_seconds={timing.warmup_max_seconds:g} must be >= "
                            f"timing.warmup_min_seconds={timing.warmup_min_seconds:g}")
    return timing


def measured_config(cfg: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The part of the config that defines what is measured (the ``config_hash`` input)."""
    keep = ("backbone", "encoder", "decoder", "input", "msda_backend", "precision", "mode", "flops", "timing",
            "energy")
    out = {k: cfg.get(k) for k in keep}
    out["flops"] = {k: v for k, v in (cfg.get("flops") or {}).items() if k != "cache_dir"}  # where, not what
    out["measure"] = parse_measures(cfg.get("measure", "flops"), device)
    out["device"] = device.type
    return out
