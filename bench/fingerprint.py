"""The code fingerprint: a hash of everything that can change a measured number.

It covers the model code (``models/``), the measuring code of ``bench/`` (not the sweep runner or
the store, which only move rows, nor the accuracy engines and checkpoint reader), the config tree
(``conf/``) and the versions of the libraries that count, time or build. Rows carry it as
``code_fingerprint``; the sweep re-measures a stored row whose fingerprint differs from the running
code's, and the FLOP stage cache keys on it.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = (("models", "**/*.py"), ("bench", "**/*.py"), ("conf", "**/*.yaml"))
NOT_MEASURING = {"bench/sweep.py", "bench/plan.py", "bench/supervise.py", "bench/store.py", "bench/locks.py",
                 "bench/fingerprint.py", "bench/__main__.py", "bench/forkserver.py", "conf/evaluate.yaml",
                 "models/checkpoints.py", "models/hf_names.py"}
NOT_MEASURING_DIRS = ("bench/evaluate/", "conf/data/")  # accuracy: scores predictions, times nothing
LIBRARIES = ("torch", "transformers", "fvcore", "ptflops", "triton", "numpy", "nvidia-ml-py")


def source_files(root: Path = REPO) -> list[Path]:
    """The files the fingerprint reads, in a stable order."""
    files = [p for folder, pattern in SOURCES for p in (root / folder).glob(pattern) if p.is_file()]
    return sorted((p for p in files if p.relative_to(root).as_posix() not in NOT_MEASURING
                   and not p.relative_to(root).as_posix().startswith(NOT_MEASURING_DIRS)),
                  key=lambda p: p.relative_to(root).as_posix())


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose behaviour enters a measurement (absent: "-")."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def fingerprint(root: Path = REPO, versions: dict[str, str] | None = None) -> str:
    """16 hex digits over the measuring sources (path and bytes) and the library versions."""
    h = hashlib.sha256()
    for path in source_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name, version in sorted((versions if versions is not None else library_versions()).items()):
        h.update(f"{name}=={version}\n".encode())
    return h.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """The running code's fingerprint, computed once per process, when the measuring code is imported
    (``bench.job`` asks at import; a fork server asks before it imports, so its jobs inherit it)."""
    return fingerprint()


def code_changed() -> str | None:
    """Why the files on disk are not the code this process imported (None when they are): a row measured
    by this process must then not be stored under either fingerprint."""
    now = fingerprint()
    if now == code_fingerprint():
        return None
    return (f"the measuring code changed on disk while this process ran (imported as {code_fingerprint()}, "
            f"now {now}): its numbers belong to neither; run again to measure the new code")
