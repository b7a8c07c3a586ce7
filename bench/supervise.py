"""Supervising a sweep's jobs: each in its own process group (a fresh interpreter, or a child of the fork
server), dying with the runner, stopped at its timeout; a job that dies without a row gets a ``failed``
row saying how it ended; each attempt keeps its own directory ``runs/<config_hash>/attempt-NNN/``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.forkserver import GRACE_S, terminate_group
from bench.plan import REPO, Job

FAULT_ENV = "ENCBENCH_FAULT_AT"  # tests only: the runner kills itself (SIGKILL) at this named moment


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
