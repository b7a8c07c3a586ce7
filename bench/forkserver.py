"""A fork server for sweep jobs: the imports once, a fresh process per job.

A job process spends about 9 s (on 2 cores) importing torch, transformers, fvcore and the models
before it measures anything. The runner instead starts this server once: it imports what a job
needs, touches no tensor, no thread pool and no GPU, and then, per job, forks a child that runs
``python -m bench``'s entry point exactly as a fresh interpreter would (its own process group, its
own stdout/stderr, the job's environment). Each job still runs in a fresh process: a copy of the
pristine, imported-only server, never of an earlier job. The sweep runner uses it on Linux machines
without a GPU (``--launcher auto``); ``--launcher spawn`` starts a new interpreter per job instead.

Protocol (JSON lines): the runner writes ``{"argv", "env", "log", "cwd"}``; the server answers
``{"pid"}`` as soon as the child exists and ``{"code"}`` when it has ended (a negative code is the
signal that ended it, as in ``subprocess.Popen.returncode``).

Run by the sweep runner as ``python -m bench.forkserver``; it exits when its input closes, and dies
with the runner (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import runpy
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# what a job imports before it measures (the slow part of a job's start)
PRELOAD = ("torch", "transformers", "hydra", "omegaconf", "numpy", "fvcore.nn", "ptflops.aten_engine",
           "torch.utils.flop_counter", "torch.profiler", "bench.job", "bench.measures",
           "bench.flops", "bench.env", "models", "models.build", "models.backbones.hf")


def preload() -> None:
    """Import what a job needs; no tensor is made (no thread pool may exist when the server forks)."""
    for name in PRELOAD:
        importlib.import_module(name)


def threads() -> int:
    """The number of OS threads of this process. After the imports there are a few idle native ones
    (torch's, OpenBLAS's, an allocator's), the state in which torch's DataLoader forks its workers too;
    no intra-op (OpenMP) pool exists, because no tensor operation has run."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def serve(inp: IO[str], out: IO[str]) -> None:
    """Answer job requests until ``inp`` closes; one child at a time. The code fingerprint is taken
    before the imports: the jobs inherit the fingerprint of the code they run."""
    from bench.fingerprint import code_fingerprint

    imported = code_fingerprint()
    preload()
    _send(out, {"ready": True, "threads": threads(), "fingerprint": imported})
    server = os.getpid()
    for line in inp:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, server)  # never returns
        with contextlib.suppress(OSError):  # the child does it too: whichever runs first makes the group
            os.setpgid(pid, pid)
        _send(out, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(out, {"code": os.waitstatus_to_exitcode(status)})


def _child(request: dict[str, Any], server: int) -> None:
    """The job process: its own group, dies with the server, stdout to /dev/null and stderr to the log,
    the job's environment and directory; then ``python -m bench``'s entry point."""
    code = 1
    try:
        os.setpgid(0, 0)
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != server:
            os._exit(1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["bench", *request["argv"]]
        try:
            runpy.run_module("bench", run_name="__main__", alter_sys=True)  # as ``python -m bench`` does
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the server
        traceback.print_exc()
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


GRACE_S = 5.0  # SIGTERM -> SIGKILL


def terminate_group(pgid: int, ended: Callable[[float], bool], grace: float = GRACE_S) -> bool:
    """SIGTERM process group ``pgid``, then SIGKILL if ``ended(seconds)`` (wait up to that long for the
    job to end) says it has not ended after ``grace`` seconds. False: the group was already gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        if ended(wait):
            return True
    return True


class ServerGone(RuntimeError):
    """The fork server ended (it was killed, or failed to start); its running job died with it."""


class ForkServer:
    """The runner's side: start the server, run one job at a time in a forked child, stop it.
    A server that died is started again for the next job."""

    def __init__(self, cwd: Path, preexec: Any = None) -> None:
        self.cwd, self.preexec = cwd, preexec
        self.pid: int | None = None  # the running child
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "bench.forkserver"], cwd=self.cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True, preexec_fn=self.preexec)
        hello = self._read(None)
        if not hello.get("ready"):
            raise ServerGone(f"the fork server did not start: {hello}")
        self.fingerprint = hello.get("fingerprint")

    def _read(self, timeout: float | None) -> dict[str, Any]:
        """The server's next message; ``{}`` on timeout; ``RuntimeError`` when the server is gone."""
        if timeout is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0.0))
            if not ready:
                return {}
        line = self.proc.stdout.readline()
        if not line:
            self.pid = None  # a child of a dead server is killed with it (PR_SET_PDEATHSIG)
            code = self.proc.wait()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise ServerGone(f"the fork server {how}")
        return json.loads(line)

    def run(self, argv: list[str], env: dict[str, str], log: Path, timeout: float) -> int | None:
        """Run one job; its exit code (negative: killed by that signal), or None when it timed out
        (its process group was stopped). ``ServerGone`` when the server died during the job."""
        if self.proc.poll() is not None:
            self._start()
        elif self.stale():
            self.close()
            self._start()
        _send(self.proc.stdin, {"argv": argv, "env": env, "log": str(log), "cwd": str(self.cwd)})
        running = True
        try:
            self.pid = self._read(None)["pid"]
            done = self._read(timeout)
            running = False
            if not done:
                self.stop()
                return None
            return done["code"]
        finally:
            if running:  # interrupted (or timed out): the job must not outlive the runner
                self._abort()

    def stale(self) -> bool:
        """True when the measuring code on disk is no longer the code the server imported."""
        from bench.fingerprint import fingerprint

        return fingerprint() != self.fingerprint

    def _abort(self) -> None:
        """Stop the running job, also when the server's word of its pid has not been read yet."""
        if self.proc.poll() is not None:  # the server is gone, and its child with it
            self.pid = None
            return
        if self.pid is None:
            with contextlib.suppress(ServerGone, ValueError, KeyError):
                self.pid = self._read(5.0).get("pid")  # sent as soon as the child exists
        if self.pid is None:  # no word: ending the server ends its child (PR_SET_PDEATHSIG)
            self.proc.kill()
            self.proc.wait()
            return
        self.stop()

    def stop(self, grace: float = GRACE_S) -> None:
        """SIGTERM the running job's process group, then SIGKILL after ``grace`` seconds."""
        pid, self.pid = self.pid, None
        if pid is not None and not terminate_group(pid, lambda wait: bool(self._read(wait)), grace):
            self._read(30.0)  # the server's word that the child was reaped

    def close(self) -> None:
        """End the server (it exits when its input closes)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
