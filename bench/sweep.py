"""Run a named sweep: every job in a fresh ``python -m bench`` process, one at a time, resumable.

On Linux without a GPU each job process is forked from a fork server that has done the imports once
(``bench.forkserver``, ``--launcher``); elsewhere it is a new interpreter. ``main`` names the main job:
the ``default`` sweep with a GPU, the CPU-sized ``cpu`` sweep without.

``python -m bench.sweep NAME [OVERRIDES...] [--force] [--keep-stale] [--results DIR] [--dry-run]
[--max-jobs N] [--timeout S] [--launcher auto|fork|spawn] [--report]``

The sweep file ``sweeps/<name>.yaml`` is a Hydra multirun config: ``hydra.sweeper.params`` is
the grid (expanded with Hydra's own override parser, so ``a,b``, ``range()``, ``choice()`` work)
and its other keys are fixed overrides. Every job is validated before anything runs. A job whose
``config_hash`` is already measured (status ok) by the same code (``code_fingerprint``) is skipped
unless ``--force``; one measured by other code is re-measured unless ``--keep-stale``.

Nothing measured is lost or duplicated (docs/reliability.md): one runner per results directory (a
lock); each job runs in its own process group and dies with the runner; results left by an earlier
run are collected before planning; each attempt keeps its own directory
``runs/<config_hash>/attempt-NNN/``; the store is backed up before a sweep writes to it.
The same file runs under Hydra's launchers:
``python -m bench --config-dir sweeps --config-name default hydra/launcher=...``.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bench.forkserver import GRACE_S, terminate_group

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
DEFAULT_RESULTS = REPO / "results"
FAULT_ENV = "ENCBENCH_FAULT_AT"  # tests only: the runner kills itself (SIGKILL) at this named moment
EXIT_INVALID, EXIT_LOCKED, EXIT_STORE = 2, 3, 4


class SweepError(Exception):
    """The sweep cannot start; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """The runner received SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested if requested in ("cpu", "cuda") else "cpu")


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


def crash_row(job: Job, error: str) -> dict[str, Any]:
    """The row of a job that died without writing one."""
    from bench.job import fill_config_columns
    from bench.row import new_row

    row = new_row()
    fill_config_columns(row, job.config)
    row.update(status="failed", error=error[-2000:], valid=False, config_hash=job.config_hash)
    return row


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def attempt_dir(runs: Path, job: Job) -> Path:
    """A new attempt directory ``runs/<config_hash>/attempt-NNN`` (earlier attempts are kept)."""
    home = runs / job.config_hash
    home.mkdir(parents=True, exist_ok=True)
    (home / "job.json").write_text(json.dumps({"label": job.label, "overrides": job.overrides}, indent=1) + "\n")
    numbers = [int(p.name.split("-")[1]) for p in home.glob("attempt-*") if p.name.split("-")[1].isdigit()]
    path = home / f"attempt-{max(numbers, default=0) + 1:03d}"
    path.mkdir()
    return path


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: on Linux the job gets SIGKILL when the runner dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def setup() -> None:
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(1)

    return setup


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, then SIGKILL after a grace period."""
    def ended(wait: float) -> bool:
        try:
            proc.wait(wait)
            return True
        except subprocess.TimeoutExpired:
            return False

    terminate_group(proc.pid, ended, GRACE_S)


def fault(moment: str) -> None:
    """Test hook: die here, as a runner killed at this moment would (``ENCBENCH_FAULT_AT``)."""
    if os.environ.get(FAULT_ENV) == moment:
        os.kill(os.getpid(), signal.SIGKILL)


def job_command(job: Job) -> list[str]:
    """``python -m bench``'s arguments for ``job`` (paths come from the environment, never the command line)."""
    return [*job.overrides, "out_dir=${oc.env:ENCBENCH_JOB_DIR}", "hydra.run.dir=${oc.env:ENCBENCH_JOB_DIR}",
            "flops.cache_dir=${oc.env:ENCBENCH_FLOPS_CACHE}"]


def spawn(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> int | None:
    """Run ``python -m bench argv`` in a fresh interpreter and process group; its exit code, None on timeout."""
    with log_path.open("w") as log:
        full = {**os.environ, **env}
        full.pop(FAULT_ENV, None)
        proc = subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=log, env=full, start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()))
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return None
        finally:
            if proc.poll() is None:  # interrupted: the job must not outlive the runner
                stop_group(proc)


def run_one(job: Job, attempt: Path, cache_dir: Path, timeout: float, server: Any = None) -> dict[str, Any]:
    """Run one job in a fresh process group in ``attempt`` (forked from ``server``, a
    ``bench.forkserver.ForkServer``, or a new interpreter); its row (from result.json, or a crash row,
    which is written there too, so that a rebuild finds every attempt)."""
    from bench.job import write_row
    from bench.store import read_row

    env = {"PYTHONUNBUFFERED": "1", "ENCBENCH_JOB_DIR": str(attempt), "ENCBENCH_FLOPS_CACHE": str(cache_dir)}
    log_path, result = attempt / "job.log", attempt / "result.json"
    gone = None
    if server is not None:
        from bench.forkserver import ServerGone

        log_path.touch()
        try:
            code = server.run(job_command(job), env, log_path, timeout)
        except ServerGone as err:
            code, gone = None, f"{err} during the job, which died with it"
    else:
        code = spawn(job_command(job), env, log_path, timeout)
    fault("job-finished")
    if result.exists():
        row, reason = read_row(result)
        if row is not None:
            return row
        result.replace(attempt / "result.json.bad")
        error = f"the job's result.json is unusable ({reason}); kept as result.json.bad"
    elif gone:
        error = gone
    elif code is None:
        error = f"timed out after {timeout:g} s (the job's process group was stopped)"
    else:
        tail = log_path.read_text(errors="replace")[-1500:].strip() or "(the log is empty)"
        error = f"the job process {describe_exit(code)} without a result row; log tail:\n{tail}"
    row = crash_row(job, error)
    write_row(row, attempt)
    return row


@dataclass
class Options:
    force: bool = False
    keep_stale: bool = False
    timeout: float = 3600.0
    max_jobs: int | None = None
    launcher: str = "auto"


def select(jobs: list[Job], measured: dict[str, str | None], fingerprint: str, opts: Options
           ) -> tuple[list[Job], list[Job], list[Job]]:
    """(to run, current, stale) of ``jobs`` given the store's measured configurations."""
    current = [j for j in jobs if j.config_hash in measured and measured[j.config_hash] == fingerprint]
    stale = [j for j in jobs if j.config_hash in measured and measured[j.config_hash] != fingerprint]
    if opts.force:
        return list(jobs), current, stale
    keep = {j.config_hash for j in current} | ({j.config_hash for j in stale} if opts.keep_stale else set())
    return [j for j in jobs if j.config_hash not in keep], current, stale


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


def run_sweep(name: str, extra: list[str], results: Path, force: bool = False, dry_run: bool = False,
              timeout: float = 3600.0, max_jobs: int | None = None, keep_stale: bool = False,
              launcher: str = "auto") -> int:
    """Run (or resume) a sweep; returns the number of failed jobs. ``SweepError`` when it cannot start."""
    from bench.fingerprint import code_fingerprint
    from bench.locks import LockHeld, results_lock
    from bench.store import ResultStore

    opts = Options(force, keep_stale, timeout, max_jobs, launcher)
    name = resolve_main(name)  # idempotent: main() resolves it first, for its messages
    results = Path(results).absolute()
    jobs = planned(name, extra)
    fingerprint = code_fingerprint()
    if dry_run:
        return _dry_run(name, jobs, results, fingerprint, opts)
    lock = results_lock(results)
    try:
        lock.acquire()
    except LockHeld as err:
        raise SweepError(f"another sweep is running: {err}; wait for it, or use another --results",
                         EXIT_LOCKED) from None
    try:
        if lock.stale_note():
            print(lock.stale_note(), file=sys.stderr)
        with ResultStore(results / "results.sqlite") as store:
            return _run(name, jobs, store, results, fingerprint, opts)
    finally:
        lock.release()


def _dry_run(name: str, jobs: list[Job], results: Path, fingerprint: str, opts: Options) -> int:
    from bench.store import ResultStore

    path = results / "results.sqlite"
    measured = {}
    if path.exists():
        with ResultStore(path, readonly=True) as store:
            measured = store.measured()
    todo, current, stale = select(jobs, measured, fingerprint, opts)
    print(_summary(name, jobs, todo, current, stale, opts), file=sys.stderr)
    for j in todo[:opts.max_jobs] if opts.max_jobs else todo:
        print(f"{j.config_hash}  {j.label}")
    return 0


def _summary(name: str, jobs: list[Job], todo: list[Job], current: list[Job], stale: list[Job],
             opts: Options) -> str:
    text = f"sweep {name}: {len(jobs)} configurations, {len(current)} measured with this code"
    if stale:
        kept = opts.keep_stale and not opts.force
        text += f", {len(stale)} measured with other code (" + (
            "kept: --keep-stale)" if kept else "re-measured; --keep-stale keeps them)")
    return text + f"; {len(todo)} to run" + (" (--force)" if opts.force else "")


def _run(name: str, jobs: list[Job], store: Any, results: Path, fingerprint: str, opts: Options) -> int:
    from tqdm import tqdm

    runs = results / "runs"
    found = store.collect([runs])
    if found.added:
        print(f"collected {found.added} result(s) left by an earlier run", file=sys.stderr)
    for path, reason in found.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    todo, current, stale = select(jobs, store.measured(), fingerprint, opts)
    print(_summary(name, jobs, todo, current, stale, opts), file=sys.stderr)
    if not todo:
        print(f"sweep {name}: nothing to run", file=sys.stderr)
        return 0
    _no_gpu_note(jobs)
    if store.count("history"):
        print(f"backup: {store.backup()}", file=sys.stderr)
    batch = todo[:opts.max_jobs] if opts.max_jobs else todo
    failures = []
    server = start_server(opts.launcher)
    try:
        bar = tqdm(batch, desc=f"sweep {name}", unit="job", file=sys.stderr, dynamic_ncols=True)
        for job in bar:
            _run_job(job, runs, results, store, opts, server, bar, failures)
        bar.close()
    finally:
        if server is not None:
            server.close()
    _report_end(name, len(batch), len(todo), failures)
    return len(failures)


def _run_job(job: Job, runs: Path, results: Path, store: Any, opts: Options, server: Any, bar: Any,
             failures: list) -> None:
    """One job: a new attempt directory, the run, its row into the store."""
    bar.set_postfix_str(job.label[:60])
    attempt = attempt_dir(runs, job)
    row = run_one(job, attempt, results / "flops_cache", opts.timeout, server)
    row["config_hash"] = row.get("config_hash") or job.config_hash
    fault("before-store")
    if not store.add(row, str(attempt / "result.json")):
        bar.write(f"  note: {job.label}: this row was already in the store")
    fault("after-store")
    if row.get("status") != "ok":
        failures.append((job, row))
        bar.write(f"  {row.get('status')}: {job.label}: {str(row.get('error'))[:200]}")


LAUNCHERS = ("auto", "fork", "spawn")


def start_server(launcher: str) -> Any:
    """The fork server for ``launcher`` (``auto``: on Linux without a GPU), or None to spawn each job.
    A server that cannot start is a warning: the jobs then start fresh interpreters."""
    import torch

    from bench.forkserver import ForkServer

    if launcher == "spawn" or (launcher == "auto" and (torch.cuda.is_available()
                                                       or not sys.platform.startswith("linux"))):
        return None
    try:
        return ForkServer(REPO, _die_with_parent(os.getpid()))
    except (RuntimeError, OSError, ValueError) as err:
        print(f"warning: {err}; each job starts a fresh interpreter instead", file=sys.stderr)
        return None


def _no_gpu_note(jobs: list[Job]) -> None:
    if "auto" in str(jobs[0].config.get("measure")):
        import torch

        if not torch.cuda.is_available():
            print("no GPU: measuring FLOPs, parameters and memory only (latency and energy need a GPU)",
                  file=sys.stderr)


def _report_end(name: str, ran: int, todo: int, failures: list) -> None:
    left = todo - ran
    if failures:
        print(f"\n{len(failures)} of {ran} jobs did not succeed:", file=sys.stderr)
        for job, row in failures:
            print(f"  [{row.get('status')}] {job.label}: {str(row.get('error')).splitlines()[0][:160]}",
                  file=sys.stderr)
    else:
        print(f"sweep {name}: all {ran} jobs run were ok", file=sys.stderr)
    if left:
        print(f"sweep {name}: stopped by --max-jobs with {left} left; run the same command again to go on",
              file=sys.stderr)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"sweep name: one of {', '.join(sweep_names())}, or a .yaml path; {MAIN} is "
                    "default with a GPU and cpu without")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (may sweep: a,b)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                    help="results directory: store, runs, cache (default: results/ in the repository)")
    ap.add_argument("--force", action="store_true", help="re-measure configurations already in the store "
                    "(also: force=true)")
    ap.add_argument("--keep-stale", action="store_true", help="keep rows measured by other code (another "
                    "code_fingerprint) instead of re-measuring them; the report marks them")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs that would run (writes nothing)")
    ap.add_argument("--timeout", type=_positive(float), default=3600.0, help="seconds per job before it is killed")
    ap.add_argument("--max-jobs", type=_positive(int), default=None, help="stop after this many jobs (resume later)")
    ap.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                    help="how each job's fresh process starts: fork (from a server that has done the imports "
                    "once), spawn (a new interpreter), auto (fork on Linux without a GPU; default)")
    ap.add_argument("--report", action="store_true", help="then build the report from the same results directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    from bench.store import StoreError

    args = parser().parse_intermixed_args(argv)
    args.name = resolve_main(args.name)
    if "force=true" in args.overrides:  # the override spelling of --force (make sweep ARGS="force=true")
        args.overrides.remove("force=true")
        args.force = True
    t0 = time.time()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        failed = run_sweep(args.name, args.overrides, args.results, args.force, args.dry_run, args.timeout,
                           args.max_jobs, args.keep_stale, args.launcher)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_STORE
    except Interrupted as err:
        print(f"\nsweep {args.name}: interrupted ({err}); every finished job is stored and the running one was "
              "stopped; run the same command again to resume", file=sys.stderr)
        return 128 + err.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"sweep {args.name}: {time.time() - t0:.0f} s", file=sys.stderr)
    if args.report and not args.dry_run:
        from reports.__main__ import main as reports_main

        reports_main(["build", f"results={args.results.absolute()}"])
    return 1 if failed else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


if __name__ == "__main__":
    sys.exit(main())
