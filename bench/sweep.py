"""Run a named sweep: every job in a fresh ``python -m bench`` process, one at a time, resumable.

``python -m bench.sweep default [OVERRIDES...] [--force] [--results DIR] [--dry-run]``

The sweep file ``sweeps/<name>.yaml`` is a Hydra multirun config: ``hydra.sweeper.params`` is
the grid (expanded with Hydra's own override parser, so ``a,b``, ``range()``, ``choice()`` work)
and its other keys are fixed overrides. Jobs whose ``config_hash`` is already measured (status ok)
in the store are skipped unless ``--force``. Each finished job's ``result.json`` is collected into
the store at once; a job that dies without one becomes a ``failed`` row. The same file runs under
Hydra's launchers: ``python -m bench --config-dir sweeps --config-name default hydra/launcher=...``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
DEFAULT_RESULTS = REPO / "results"


@dataclass
class Job:
    index: int
    overrides: list[str]
    config: dict[str, Any]
    config_hash: str
    label: str


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def sweep_path(name: str) -> Path:
    """``sweeps/<name>.yaml``, or ``name`` itself when it is a path to a .yaml file."""
    return Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS / f"{name}.yaml"


def load_sweep(name: str) -> tuple[list[str], dict[str, str]]:
    """(fixed overrides, sweep params) of a sweep file."""
    path = sweep_path(name)
    if not path.exists():
        raise SystemExit(f"unknown sweep {name!r}; valid sweeps: {', '.join(sweep_names())}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    params = {str(k): str(v) for k, v in (((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}).items()}
    fixed = [f"{k}={_value(v)}" for k, v in _flatten({k: v for k, v in raw.items() if k not in ("defaults", "hydra")})]
    return fixed, params


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

    parser = OverridesParser.create()
    settings: dict[str, list[str]] = {}
    for ov in parser.parse_overrides(list(fixed) + [f"{k}={v}" for k, v in params.items()] + list(extra)):
        key = ov.get_key_element()
        values = [f"{key}={v}" for v in ov.sweep_string_iterator()] if ov.is_sweep_override() else [ov.input_line]
        settings.pop(key, None)  # re-insert: keeps the order of last setting
        settings[key] = values
    return [list(combo) for combo in itertools.product(*settings.values())]


def hash_device(requested: str):
    """The device a job will resolve to (as ``python -m bench`` does), for its ``config_hash``."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested if requested in ("cpu", "cuda") else "cpu")


def plan(name: str, extra: list[str]) -> list[Job]:
    """Compose every job's config (fails fast on bad overrides) and its config_hash."""
    fixed, params = load_sweep(name)
    grid = expand([f"sweep={sweep_path(name).stem}", *fixed], params, extra)
    return [make_job(i, overrides) for i, overrides in enumerate(grid)]


def make_job(index: int, overrides: list[str]) -> Job:
    """One job: its composed config, config_hash and a short label."""
    from bench.config import compose, to_dict
    from bench.row import config_hash
    from bench.settings import measured_config
    from models.encoders import variant_name

    cfg = to_dict(compose(overrides))
    device = hash_device(cfg.get("device", "auto"))
    inp = cfg["input"]
    label = (f"{variant_name(cfg['encoder'])} {cfg['backbone']['name']} {inp['name']} {inp['height']}x"
             f"{inp['width']} b{inp['batch']} {cfg.get('precision')} {cfg.get('mode')} "
             f"msda={cfg.get('msda_backend', 'pytorch')}"
             + ("" if cfg["encoder"].get("force_fp32", True) else " pixdec-lowp"))
    return Job(index, overrides, cfg, config_hash(measured_config(cfg, device)), label)


def crash_row(job: Job, error: str) -> dict[str, Any]:
    """The row of a job that died without writing one."""
    from bench.job import fill_config_columns
    from bench.row import new_row

    row = new_row()
    fill_config_columns(row, job.config)
    row.update(status="failed", error=error[-2000:], valid=False, config_hash=job.config_hash)
    return row


def run_one(job: Job, job_dir: Path, cache_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one job in a fresh process; its row (from result.json, or a crash row)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    result = job_dir / "result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench", *job.overrides, f"out_dir={job_dir}", f"hydra.run.dir={job_dir}",
           f"flops.cache_dir={cache_dir}"]
    with (job_dir / "job.log").open("w") as log:
        try:
            subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, timeout=timeout,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            return crash_row(job, f"timed out after {timeout:.0f} s")
    if result.exists():
        return json.loads(result.read_text())
    tail = (job_dir / "job.log").read_text()[-1500:]
    return crash_row(job, f"the job process died without a result row; log tail:\n{tail}")


def run_sweep(name: str, extra: list[str], results: Path, force: bool = False, dry_run: bool = False,
              timeout: float = 3600.0, max_jobs: int | None = None) -> int:
    """Run (or resume) a sweep; returns the number of failed jobs."""
    from tqdm import tqdm

    from bench.store import ResultStore

    jobs = plan(name, extra)
    with ResultStore(results / "results.sqlite") as store:
        todo = [j for j in jobs if force or store.status(j.config_hash) != "ok"]
        print(f"sweep {name}: {len(jobs)} configurations, {len(jobs) - len(todo)} already measured, "
              f"{len(todo)} to run", file=sys.stderr)
        if jobs and "auto" in str(jobs[0].config.get("measure")):
            import torch

            if not torch.cuda.is_available():
                print("no GPU: measuring FLOPs, parameters and memory only (latency and energy need a GPU)",
                      file=sys.stderr)
        if dry_run:
            for j in todo:
                print(f"{j.config_hash}  {j.label}")
            return 0
        failures = []
        runs = results / "runs" / sweep_path(name).stem
        bar = tqdm(todo[:max_jobs] if max_jobs else todo, desc=f"sweep {name}", unit="job", file=sys.stderr,
                   dynamic_ncols=True)
        for job in bar:
            bar.set_postfix_str(job.label[:60])
            job_dir = runs / f"{job.index:04d}_{job.config_hash}"
            row = run_one(job, job_dir, results / "flops_cache", timeout)
            row["config_hash"] = row.get("config_hash") or job.config_hash
            store.add(row, str(job_dir / "result.json"))
            if row.get("status") != "ok":
                failures.append((job, row))
                bar.write(f"  {row.get('status')}: {job.label}: {str(row.get('error'))[:200]}")
        bar.close()
    if failures:
        print(f"\n{len(failures)} of {len(todo)} jobs did not succeed:", file=sys.stderr)
        for job, row in failures:
            print(f"  [{row.get('status')}] {job.label}: {str(row.get('error')).splitlines()[0][:160]}",
                  file=sys.stderr)
    else:
        print(f"sweep {name}: all {len(todo)} jobs ok", file=sys.stderr)
    return len(failures)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"sweep name: one of {', '.join(sweep_names())}")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (may sweep: a,b)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results directory (store, runs, cache)")
    ap.add_argument("--force", action="store_true", help="re-measure configurations already in the store "
                    "(also: force=true)")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs that would run")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per job before it is killed")
    ap.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs (resume later)")
    args = ap.parse_args(argv)
    if "force=true" in args.overrides:  # the override spelling of --force (make sweep ARGS="force=true")
        args.overrides.remove("force=true")
        args.force = True
    t0 = time.time()
    failed = run_sweep(args.name, args.overrides, args.results, args.force, args.dry_run, args.timeout,
                       args.max_jobs)
    print(f"sweep {args.name}: {time.time() - t0:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
