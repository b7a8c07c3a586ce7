"""Run a named sweep: every job in a fresh ``python -m bench`` process, one at a time, resumable.
Planning and validation live in ``bench.plan``, the job processes' supervision in ``bench.supervise``;
this module decides what to run, keeps the store, and is the command line.

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
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan import (  # noqa: F401
    MAIN,
    REPO,
    SWEEPS,
    Job,
    SweepError,
    hash_device,
    make_job,
    plan,
    planned,
    resolve_main,
    sweep_names,
)
from bench.supervise import (  # noqa: F401
    FAULT_ENV,
    LAUNCHERS,
    attempt_dir,
    crash_row,
    describe_exit,
    fault,
    job_command,
    run_one,
    spawn,
    start_server,
    stop_group,
)

DEFAULT_RESULTS = REPO / "results"
EXIT_INVALID, EXIT_LOCKED, EXIT_STORE = 2, 3, 4


class Interrupted(Exception):
    """The runner received SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
        report(args.results)
    return 1 if failed else 0


def report(results: Path) -> int:
    """Build the report of ``results`` (``python -m reports build``, in its own process: the measuring side
    never imports the reporting side); its exit status."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "reports", "build", f"results={results.absolute()}"],
                          cwd=REPO).returncode


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


if __name__ == "__main__":
    sys.exit(main())
