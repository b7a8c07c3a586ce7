"""Advisory locks: one sweep per results directory, one timed job per GPU.

A lock is an ``flock`` on a small file that also names its holder (PID, host, start time, command).
The kernel releases it when the holder dies, however it dies, so a lock left by a dead runner is
never in the way: the next runner takes it and says whose it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names it."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """An exclusive ``flock`` on ``path``, with the holder's identity written into the file."""

    def __init__(self, path: Path | str, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None
        self.previous: dict[str, Any] = {}

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def describe(self, info: dict[str, Any]) -> str:
        if not info:
            return "another process"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return f"PID {info.get('pid')} on {info.get('host')}, started {started} ({info.get('command', '?')})"

    def acquire(self, wait: float = 0.0) -> FileLock:
        """Take the lock, waiting up to ``wait`` seconds; ``LockHeld`` names the holder otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeld(f"{self.what} is in use by {self.describe(self.holder())} "
                                   f"(lock file {self.path})") from None
                time.sleep(0.2)
        self.previous = self.holder()  # a dead holder's note: its lock was released by the kernel
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)[:200]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # a full disk: the lock holds without its note (whoever waits reads "another process")
            pass
        self.fd = fd
        return self

    def stale_note(self) -> str | None:
        """A line about the dead holder whose lock was taken over, if there was one."""
        pid = self.previous.get("pid")
        if not pid or pid == os.getpid():
            return None
        if self.previous.get("host") != socket.gethostname():  # another host's process cannot be looked up
            return (f"took over a lock left by {self.describe(self.previous)}: its flock was free, so it no longer "
                    "holds this directory (whether it still runs on that host cannot be seen from here)")
        if pid_alive(pid):
            return None
        return f"took over a lock left by {self.describe(self.previous)}, which is no longer running"

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


SWEEP_LOCK = ".sweep.lock"


def results_lock(results: Path | str) -> FileLock:
    """The lock of a results directory: held by a sweep, and by whatever else writes its store."""
    return FileLock(Path(results) / SWEEP_LOCK, f"the results directory {Path(results)}")


def gpu_lock_path(device_key: str) -> Path:
    """The machine-wide lock file of one GPU (shared by every results directory on this host)."""
    root = Path(os.environ.get("ENCBENCH_LOCK_DIR", tempfile.gettempdir()))
    return root / f"encbench-gpu-{device_key}.lock"
