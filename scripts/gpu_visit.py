"""One visit to a lent GPU machine: ``scripts.gpu_validate`` under a hard time limit, then its results packed
into the few files such a machine returns.

A lent machine's output folder gives back at most 8 files, 16 MiB each and 64 MiB together, none more
than 2 folders down, named with letters, digits, ``.``, ``_`` and ``-`` only. So the validation writes
to a local folder (caches included, which never travel), runs in its own process group and is stopped
at ``--budget`` seconds whatever it is doing, and then this command copies into ``--out``:

- ``summary.json``: the validation's summary (steps, rows in brief, ratios), as it stood at the end;
- ``validate.tar.gz``: everything else it wrote except the caches (per-step JSON, ``core.csv``, the
  results store and job directories, the log); files over 1 MiB are left out if the whole would not fit;
- ``validate.log``: the validation's stdout and stderr (its last 4 MiB);
- ``visit.json``: this visit's own record: exit status, seconds, whether it was stopped, what was
  packed and what was left out.

It checks the result against those limits and names any breach. Rehearse the whole visit on CPU with
``--smoke`` (tiny shapes; ``TRITON_INTERPRET=1`` for the triton core).

    python3 -m scripts.gpu_visit --out $OUT --budget 480 --deadline 400
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench.forkserver import terminate_group

MAX_FILES, MAX_FILE, MAX_TOTAL, MAX_DEPTH = 8, 16 * 2**20, 64 * 2**20, 2
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
CACHE_DIRS = ("cache",)
BIG_FILE = 2**20
LOG_TAIL = 4 * 2**20


def returnable(dest: Path) -> list[str]:
    """The ways ``dest`` breaks the limits of what a lent machine returns (empty: all of it comes back)."""
    files = [p for p in dest.rglob("*") if p.is_file() or p.is_symlink()]
    bad = [f"{len(files)} files (at most {MAX_FILES})"] if len(files) > MAX_FILES else []
    for p in files:
        rel = p.relative_to(dest)
        if p.is_symlink():
            bad.append(f"{rel}: a link")
        if len(rel.parts) - 1 > MAX_DEPTH:
            bad.append(f"{rel}: more than {MAX_DEPTH} folders down")
        if not all(NAME.match(part) for part in rel.parts):
            bad.append(f"{rel}: a name with characters other than letters, digits, '.', '_' and '-'")
        if p.stat().st_size > MAX_FILE:
            bad.append(f"{rel}: {p.stat().st_size} bytes (at most {MAX_FILE})")
    total = sum(p.stat().st_size for p in files)
    return bad + ([f"{total} bytes in all (at most {MAX_TOTAL})"] if total > MAX_TOTAL else [])


def archive(src: Path, target: Path, skip: set[Path]) -> list[str]:
    """``src`` (less the caches and ``skip``) as a gzipped tar; files over 1 MiB are dropped when the whole
    would exceed one returnable file. Returns what was left out."""
    members = sorted(p for p in src.rglob("*") if p.is_file() and p not in skip
                     and p.relative_to(src).parts[0] not in CACHE_DIRS)
    left_out: list[str] = []
    for limit in (None, BIG_FILE):
        kept = [p for p in members if limit is None or p.stat().st_size <= limit]
        with tarfile.open(target, "w:gz") as tar:
            for p in kept:
                tar.add(p, arcname=str(p.relative_to(src)))
        left_out = [f"{p.relative_to(src)} ({p.stat().st_size} bytes)" for p in members if p not in kept]
        if target.stat().st_size <= MAX_FILE:
            return left_out
    target.unlink()
    return ["everything: the archive exceeds one returnable file even without files over 1 MiB"]


def pack(local: Path, out: Path, visit: dict) -> dict:
    """Copy the summary, the log's tail and one archive of the rest from ``local`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary, log = local / "summary.json", local / "validate.log"
    packed = []
    if summary.exists():
        shutil.copyfile(summary, out / "summary.json")
        packed.append("summary.json")
    if log.exists():
        with log.open("rb") as f:
            f.seek(max(log.stat().st_size - LOG_TAIL, 0))
            (out / "validate.log").write_bytes(f.read())
        packed.append("validate.log")
    visit["left_out"] = archive(local, out / "validate.tar.gz", {summary})
    packed += ["validate.tar.gz"] if (out / "validate.tar.gz").exists() else []
    visit["packed"] = packed + ["visit.json"]
    (out / "visit.json").write_text(json.dumps(visit, indent=2))
    visit["breaches"] = returnable(out)
    (out / "visit.json").write_text(json.dumps(visit, indent=2))
    return visit


def validate(local: Path, budget: float, cmd: list[str]) -> dict:
    """``cmd`` (``python -m scripts.gpu_validate --out local ...``) in its own process group, its output both
    echoed and logged to ``local/validate.log``, stopped (SIGTERM, then SIGKILL) at ``budget`` seconds."""
    local.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var, sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        env.setdefault(var, str(local / "cache" / sub))
    t0, stopped = time.monotonic(), False
    with (local / "validate.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
        os.set_blocking(proc.stdout.fileno(), False)
        while proc.poll() is None or _drain(proc, log):
            _drain(proc, log)
            if proc.poll() is None and time.monotonic() - t0 > budget:
                stopped = True
                terminate_group(proc.pid, lambda s: _ended(proc, s), grace=5.0)
            time.sleep(0.05)
    return {"command": cmd, "returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
            "stopped_at_budget": stopped, "budget_s": budget}


def _drain(proc: subprocess.Popen, log) -> bool:
    """Copy what the child printed to the log and to our stdout; True if there was something."""
    data = proc.stdout.read()
    if not data:
        return False
    log.write(data)
    log.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return True


def _ended(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scripts.gpu_visit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the folder that comes back (the run's $OUT)")
    ap.add_argument("--local", type=Path, default=Path("/tmp/encbench-visit"), help="where the validation writes")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which the validation is stopped")
    ap.add_argument("--deadline", type=float, default=400.0, help="gpu_validate's --deadline: nothing new after it")
    ap.add_argument("--smoke", action="store_true", help="a rehearsal on CPU (gpu_validate --smoke)")
    args, rest = ap.parse_known_args(argv)
    if args.deadline >= args.budget:
        ap.error(f"--deadline {args.deadline:g} must be below --budget {args.budget:g}: the steps that run past "
                 "the deadline need time to finish")
    cmd = [sys.executable, "-m", "scripts.gpu_validate", "--out", str(args.local), "--deadline", str(args.deadline),
           *(["--smoke"] if args.smoke else []), *rest]
    visit = validate(args.local, args.budget, cmd)
    visit = pack(args.local, args.out, visit)
    print(f"# gpu_visit: exit {visit['returncode']} after {visit['seconds']} s"
          f"{' (stopped at the budget)' if visit['stopped_at_budget'] else ''}; packed {', '.join(visit['packed'])}"
          f"{'; LIMITS BROKEN: ' + '; '.join(visit['breaches']) if visit['breaches'] else ''}", flush=True)
    return visit


if __name__ == "__main__":
    sys.exit(1 if main()["breaches"] else 0)
