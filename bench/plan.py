"""Planning a sweep: the sweep file, its grid (expanded with Hydra's own override parser, so ``a,b``,
``range()``, ``choice()`` work), one ``Job`` per distinct configuration (composed config,
``config_hash``, label), and the validation of every job before anything runs: its measurement settings
and its model (built on the meta device). ``main`` names the main job: the ``default`` sweep with a GPU,
the CPU-sized ``cpu`` sweep without.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
EXIT_INVALID = 2


class SweepError(Exception):
    """The sweep cannot start; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Job:
    overrides: list[str]
    config: dict[str, Any]
    config_hash: str
    label: str


MAIN = "main"  # the main job: the default sweep on a machine with a GPU, the CPU-sized one without


def sweep_names() -> list[str]:
    return [MAIN, *sorted(p.stem for p in SWEEPS.glob("*.yaml"))]


def resolve_main(name: str) -> str:
    """``main`` is ``default`` where CUDA is available and ``cpu`` (CPU-sized) elsewhere; other names as given."""
    if name != MAIN:
        return name
    import torch

    chosen = "default" if torch.cuda.is_available() else "cpu"
    where = "a GPU is available" if chosen == "default" else "no GPU: the CPU-sized main job"
    print(f"sweep main: {where}, running sweeps/{chosen}.yaml", file=sys.stderr)
    return chosen


def sweep_path(name: str) -> Path:
    """``sweeps/<name>.yaml``, or ``name`` itself when it is a path to a .yaml file."""
    return Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS / f"{name}.yaml"


def load_sweep(name: str) -> tuple[list[str], dict[str, str]]:
    """(fixed overrides, sweep params) of a sweep file."""
    path = sweep_path(name)
    if not path.exists():
        raise SweepError(f"unknown sweep {name!r}; valid sweeps: {', '.join(sweep_names())}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    check_fixed_keys(path, raw)
    params = {str(k): str(v) for k, v in (((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}).items()}
    fixed = [f"{k}={_value(v)}" for k, v in _flatten({k: v for k, v in raw.items() if k not in ("defaults", "hydra")})]
    return fixed, params


def check_fixed_keys(path: Path, raw: dict) -> None:
    """A group choice (``backbone: r50``) or a dotted key (``input.height: 512``) among a sweep file's fixed
    keys would be read as a plain value by Hydra's launchers: they belong under ``hydra.sweeper.params``."""
    from bench.config import CONF_DIR

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    bad = [k for k, v in raw.items() if (k in groups and not isinstance(v, dict)) or "." in str(k)]
    if bad:
        raise SweepError(f"{path}: {', '.join(bad)} must go under hydra.sweeper.params (a single value is fine), "
                         "so that Hydra's launchers read them as overrides too")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else str(v)


def expand(fixed: list[str], params: dict[str, str], extra: list[str]) -> list[list[str]]:
    """All override lists of the grid. Hydra's parser expands the sweep syntax; for each key the last
    setting wins, in the order: the file's fixed keys, the file's grid, then ``extra`` (so extra
    overrides narrow or replace an axis of the grid)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    settings: dict[str, list[str]] = {}
    try:
        parsed = parser.parse_overrides(list(fixed) + [f"{k}={v}" for k, v in params.items()] + list(extra))
    except HydraException as err:
        raise SweepError(f"bad override: {err}") from None
    for ov in parsed:
        key = ov.get_key_element()
        values = [f"{key}={v}" for v in ov.sweep_string_iterator()] if ov.is_sweep_override() else [ov.input_line]
        settings.pop(key, None)  # re-insert: keeps the order of last setting
        settings[key] = values
    return [list(combo) for combo in itertools.product(*settings.values())]


def hash_device(requested: Any):
    """The device a job will resolve to (as ``python -m bench`` does), for its ``config_hash``."""
    from bench.settings import DEVICES, auto_device

    return auto_device(requested if requested in DEVICES else "cpu")  # a bad name: validate() reports it


def plan(name: str, extra: list[str]) -> list[Job]:
    """Compose every job's config (a bad override is a ``SweepError`` naming the valid keys) and its
    config_hash; grid points that measure the same configuration run once."""
    from bench.config import ConfigError

    fixed, params = load_sweep(name)
    grid = expand([f"sweep={sweep_path(name).stem}", *fixed], params, extra)
    jobs: dict[str, Job] = {}
    for overrides in grid:
        try:
            job = make_job(overrides)
        except ConfigError as err:
            raise SweepError(f"invalid configuration ({' '.join(overrides)}):\n  {err}") from None
        jobs.setdefault(job.config_hash, job)
    return list(jobs.values())


def make_job(overrides: list[str]) -> Job:
    """One job: its composed config, config_hash and a short label."""
    from bench.config import compose, to_dict
    from bench.row import config_hash
    from bench.settings import measured_config
    from models.encoders import variant_name

    cfg = to_dict(compose(overrides))
    device = hash_device(cfg.get("device", "auto"))
    inp, enc = cfg["input"], cfg["encoder"]
    try:
        variant = variant_name(enc)
    except Exception:  # noqa: BLE001 - a bad knob is reported by validate(), with its key
        variant = str(enc.get("name"))
    label = (f"{variant} {cfg['backbone'].get('name')} {inp.get('name')} {inp.get('height')}x"
             f"{inp.get('width')} b{inp.get('batch')} {cfg.get('precision')} {cfg.get('mode')} "
             f"msda={cfg.get('msda_backend', 'pytorch')}"
             + ("" if enc.get("force_fp32", True) else " pixdec-lowp"))
    try:
        chash = config_hash(measured_config(cfg, device))
    except Exception:  # noqa: BLE001 - e.g. a bad measure name: validate() names it
        chash = config_hash(cfg)
    return Job(overrides, cfg, chash, label)


def validate(jobs: list[Job]) -> tuple[list[str], dict[str, list[Job]]]:
    """Every job's measurement settings and model build (on the meta device: no memory, no time).
    Returns the distinct invalid settings (each with one job that has it) and, by reason, the jobs that
    are valid but need other hardware than this machine's (CUDA-only options without a GPU)."""
    from bench.settings import InvalidConfig, JobSettings, NeedsOtherHardware, check_model

    reasons: dict[str, str] = {}
    elsewhere: dict[str, list[Job]] = {}
    built: set[str] = set()
    for job in jobs:
        try:
            JobSettings.from_config(job.config)
            model_key = json.dumps({k: job.config.get(k) for k in ("backbone", "encoder", "decoder", "input")},
                                   sort_keys=True, default=str)
            if model_key not in built:
                check_model(job.config)
                built.add(model_key)
        except NeedsOtherHardware as err:
            elsewhere.setdefault(str(err), []).append(job)
        except (InvalidConfig, ValueError, KeyError, TypeError) as err:
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            reasons.setdefault(text, job.label)
    return [f"{reason}  (e.g. {label})" for reason, label in reasons.items()], elsewhere


def planned(name: str, extra: list[str]) -> list[Job]:
    """The validated jobs of a sweep; ``SweepError`` (exit 2) lists every invalid setting."""
    jobs = plan(name, extra)
    if not jobs:
        raise SweepError(f"sweep {name}: the grid has no configurations")
    problems, elsewhere = validate(jobs)
    if problems:
        raise SweepError(f"sweep {name}: {len(problems)} invalid setting(s), nothing was run:\n  "
                         + "\n  ".join(problems))
    skipped = {j.config_hash for group in elsewhere.values() for j in group}
    for reason, group in elsewhere.items():
        print(f"sweep {name}: skipping {len(group)} configuration(s) this machine cannot run: {reason}",
              file=sys.stderr)
    runnable = [j for j in jobs if j.config_hash not in skipped]
    if not runnable:
        raise SweepError(f"sweep {name}: none of its {len(jobs)} configurations can run on this machine")
    return runnable
