"""The fault matrix: kills at every moment, signals, concurrent runners, code changes, damaged stores,
bad result files and the cluster path, each on a tiny CPU sweep; nothing measured is lost, stale or
duplicated, and every fault ends with a clear message (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.locks import FileLock, LockHeld
from bench.store import ResultStore, StoreError, rebuild_store
from bench.sweep import EXIT_LOCKED, FAULT_ENV, REPO, plan, run_sweep
from bench.sweep import main as sweep_main
from tests.conftest import on_tiny_disk, write_tiny_sweep

pytestmark = pytest.mark.slow  # fresh job processes

def write_sweep(tmp_path: Path, encoders: str = "m2f", slow: bool = False) -> str:
    return write_tiny_sweep(tmp_path, encoders, slow=slow)


def start_runner(sweep: str, results: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.sweep", sweep, "--results", str(results), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def children(pid: int) -> list[int]:
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def job_pid(runner: subprocess.Popen, timeout: float = 120.0) -> int:
    """The PID of the job process the runner started (waits for it): the runner's child, or, with the
    fork server, the server's child."""
    deadline = time.monotonic() + timeout
    own = Path(f"/proc/{runner.pid}/cmdline").read_bytes()
    while time.monotonic() < deadline:
        for kid in children(runner.pid):
            try:
                cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == own:  # forked, not yet exec'd: it could still become the fork server
                continue
            if b"bench.forkserver" not in cmdline:
                return kid
            if children(kid):
                return children(kid)[0]
        if runner.poll() is not None:
            raise AssertionError(f"the runner exited first: {runner.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError("no job process appeared")


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` has exited (a zombie of a dead parent is reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def stored(results: Path, table: str = "history") -> list[dict]:
    with ResultStore(results / "results.sqlite", readonly=True) as store:
        return store.rows(table)


def attempts(results: Path) -> list[Path]:
    return sorted((results / "runs").glob("*/attempt-*"))


# ------------------------------------------------------------------ kills and signals
LAUNCHERS = pytest.mark.parametrize("launcher", ["fork", "spawn"])


@LAUNCHERS
@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_killed_runner_takes_its_job_with_it_and_a_rerun_measures_once(tmp_path, sig, code, launcher):
    sweep, results = write_sweep(tmp_path, slow=True), tmp_path / "results"
    runner = start_runner(sweep, results, "--launcher", launcher)
    child = job_pid(runner)
    time.sleep(1.0)
    runner.send_signal(sig)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == code
    assert gone(child), "the job outlived its runner"
    if sig != signal.SIGKILL:
        assert "interrupted" in err and "run the same command again to resume" in err
        assert "Traceback" not in err
    assert run_sweep(sweep, [], results) == 0
    rows = stored(results)
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert [p.name for p in attempts(results)] == ["attempt-001", "attempt-002"]  # the first is kept, unstored


@pytest.mark.parametrize("moment", ["job-finished", "before-store", "after-store"])
def test_a_runner_killed_around_storing_loses_nothing_and_measures_nothing_twice(tmp_path, moment):
    sweep, results = write_sweep(tmp_path), tmp_path / "results"
    runner = start_runner(sweep, results, env={FAULT_ENV: moment})
    runner.communicate(timeout=300)
    assert runner.returncode == -signal.SIGKILL
    assert (attempts(results)[0] / "result.json").exists()  # never deleted, stored or not
    assert sweep_main([sweep, "--results", str(results)]) == 0  # collects it first: nothing to run
    rows = stored(results)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and len(attempts(results)) == 1
    assert Path(stored_source(results)).exists()


def stored_source(results: Path) -> str:
    with ResultStore(results / "results.sqlite", readonly=True) as store:
        return store.conn.execute("SELECT source FROM history").fetchone()[0]


@LAUNCHERS
def test_a_job_killed_by_a_signal_is_a_failed_row_that_says_so(tmp_path, launcher):
    sweep, results = write_sweep(tmp_path, slow=True), tmp_path / "results"
    runner = start_runner(sweep, results, "--launcher", launcher)
    child = job_pid(runner)
    time.sleep(1.0)
    os.kill(child, signal.SIGKILL)
    runner.communicate(timeout=60)
    assert runner.returncode == 1
    (row,) = stored(results)
    assert row["status"] == "failed" and "was killed by signal 9 (SIGKILL)" in row["error"]
    assert "log tail" in row["error"]
    assert json.loads((attempts(results)[0] / "result.json").read_text())["run_id"] == row["run_id"]


@LAUNCHERS
def test_a_job_past_its_timeout_is_stopped_with_its_process_group(tmp_path, launcher):
    sweep, results = write_sweep(tmp_path, slow=True), tmp_path / "results"
    runner = start_runner(sweep, results, "--timeout", "3", "--launcher", launcher)
    child = job_pid(runner)
    runner.communicate(timeout=60)
    assert gone(child)
    (row,) = stored(results)
    assert row["status"] == "failed" and "timed out after 3 s" in row["error"]


# ------------------------------------------------------------------ one runner per store
def test_a_second_runner_on_the_same_store_stops_at_once_naming_the_first(tmp_path, capsys):
    sweep, results = write_sweep(tmp_path), tmp_path / "results"
    first = start_runner(sweep, results)
    job_pid(first)
    t0 = time.monotonic()
    assert sweep_main([sweep, "--results", str(results)]) == EXIT_LOCKED
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert f"PID {first.pid}" in err and "another sweep is running" in err
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)


def test_a_lock_is_named_while_held_and_taken_over_from_a_dead_holder(tmp_path):
    path = tmp_path / ".sweep.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from bench.locks import FileLock
FileLock({str(path)!r}, "x").acquire()
print("held", flush=True)
time.sleep(60)
"""], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld, match=f"PID {holder.pid} on .*started"):
        FileLock(path, "the store").acquire()
    holder.kill()
    holder.wait()
    lock = FileLock(path, "the store").acquire()  # the kernel released the dead holder's lock
    assert f"PID {holder.pid}" in lock.stale_note() and "no longer running" in lock.stale_note()
    lock.release()


def test_timed_jobs_never_share_a_gpu(tmp_path, monkeypatch):
    """The job's GPU lock is machine-wide (any results directory): a second timed job waits, then fails
    untimed, naming the holder. CUDA is faked: only the lock is under test."""
    import torch

    import bench.job as job

    monkeypatch.setenv("ENCBENCH_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"uuid": "GPU-test"})())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Test GPU")
    monkeypatch.setattr(job, "GPU_WAIT_S", 0.5)
    monkeypatch.setattr(job, "_held", [])
    holder = subprocess.Popen([sys.executable, "-c", """
import time
from bench.locks import FileLock, gpu_lock_path
FileLock(gpu_lock_path("GPU-test"), "x").acquire()
print("held", flush=True)
time.sleep(60)
"""], cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "ENCBENCH_LOCK_DIR": str(tmp_path)})
    assert holder.stdout.readline().strip() == "held"
    job.hold_gpu(torch.device("cpu"), ("latency",))  # CPU jobs never take it
    job.hold_gpu(torch.device("cuda"), ("flops",))  # nor untimed measures
    assert job._held == []
    with pytest.raises(RuntimeError, match=f"timed jobs never share a GPU: GPU Test GPU .* PID {holder.pid}"):
        job.hold_gpu(torch.device("cuda"), ("latency",))
    holder.kill()
    holder.wait()
    job.hold_gpu(torch.device("cuda"), ("energy",))
    assert len(job._held) == 1
    job._held[0].release()


# ------------------------------------------------------------------ code changes
def test_rows_from_other_code_are_remeasured_unless_kept_and_the_report_marks_them(tmp_path, capsys):
    from reports.__main__ import main as reports_main

    sweep, results = write_sweep(tmp_path), tmp_path / "results"
    (job,) = plan(sweep, [])
    old = {"run_id": "old1", "config_hash": job.config_hash, "status": "ok", "created_at": "2026-01-01T00:00:00",
           "code_fingerprint": "0123456789abcdef", "git_commit": "abc", "variant": "m2f", "encoder": "m2f",
           "backbone": "r50", "dataset": "ade20k", "height": 64, "width": 64, "batch": 1, "device": "cpu",
           "cpu_name": "cpu", "precision": "fp32", "mode": "eager", "gmacs_total": 1.0, "sweep": "tiny"}
    with ResultStore(results / "results.sqlite") as store:
        store.add(old)
    assert run_sweep(sweep, [], results, keep_stale=True) == 0
    assert "1 measured with other code (kept: --keep-stale); 0 to run" in capsys.readouterr().err
    assert reports_main(["build", f"results={results}"]) == 0
    md = (results / "report" / "report.md").read_text()
    assert "0123456789abcdef (stale)" in md and "measured by other code than the current" in md
    assert run_sweep(sweep, [], results) == 0  # the default: re-measure
    err = capsys.readouterr().err
    assert "re-measured" in err and "backup: " in err
    (backup,) = (results / "backups").glob("results-*.sqlite")  # taken before the sweep wrote
    assert [r["run_id"] for r in ResultStore(backup, readonly=True).rows("history")] == ["old1"]
    rows = stored(results, "results")
    assert len(rows) == 1 and rows[0]["code_fingerprint"] != "0123456789abcdef"
    assert run_sweep(sweep, [], results) == 0
    assert "0 to run" in capsys.readouterr().err


def test_the_flop_cache_key_changes_with_the_code(tmp_path, monkeypatch):
    import bench.fingerprint as fp
    from bench.flops import FlopCache

    cache = FlopCache(tmp_path)
    before = cache.key("backbone", (1, 3, 64, 64))
    monkeypatch.setattr(fp, "code_fingerprint", lambda: "another-code")
    assert cache.key("backbone", (1, 3, 64, 64)) != before


def test_the_fingerprint_follows_measuring_code_and_libraries_only(tmp_path):
    from bench.fingerprint import fingerprint

    for rel in ("models/a.py", "bench/measures/m.py", "bench/sweep.py", "bench/forkserver.py",
                "bench/evaluate/panoptic.py", "models/checkpoints.py", "conf/c.yaml", "docs/d.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    base = fingerprint(tmp_path, {"torch": "2.13.0"})
    assert fingerprint(tmp_path, {"torch": "2.14.0"}) != base
    for rel in ("bench/sweep.py", "bench/forkserver.py", "bench/evaluate/panoptic.py", "models/checkpoints.py"):
        (tmp_path / rel).write_text("x = 2\n")
    (tmp_path / "docs/d.md").write_text("changed\n")
    assert fingerprint(tmp_path, {"torch": "2.13.0"}) == base
    for rel in ("models/a.py", "bench/measures/m.py", "conf/c.yaml"):
        (tmp_path / rel).write_text("x = 3\n")
        assert fingerprint(tmp_path, {"torch": "2.13.0"}) != base
        (tmp_path / rel).write_text("x = 1\n")


# ------------------------------------------------------------------ the store's safety net
def fake(run_id: str, h: str, status: str = "ok") -> dict:
    return {"run_id": run_id, "config_hash": h, "status": status, "created_at": f"2026-01-0{run_id}"}


@pytest.mark.parametrize("content", [b"", b"this is not a database" * 100])
def test_an_empty_or_corrupt_store_is_an_error_with_the_recovery_command(tmp_path, content, capsys):
    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=f"{path}.*python -m reports rebuild results={tmp_path}"):
            ResultStore(path, readonly=readonly)
    assert sweep_main([write_sweep(tmp_path), "--results", str(tmp_path)]) == 4
    assert "python -m reports rebuild" in capsys.readouterr().err
    assert path.read_bytes() == content  # never replaced by a new store


def test_rebuild_recovers_every_row_from_the_run_directories(tmp_path):
    runs = tmp_path / "runs"
    rows = [fake("1", "a", "failed"), fake("2", "a"), fake("3", "b")]
    for i, r in enumerate(rows):
        (runs / r["config_hash"] / f"attempt-00{i}").mkdir(parents=True)
        (runs / r["config_hash"] / f"attempt-00{i}" / "result.json").write_text(json.dumps(r))
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"garbage" * 1000)
    done, old = rebuild_store(path, [runs])
    assert done.added == 3 and old.read_bytes() == b"garbage" * 1000
    with ResultStore(path) as store:
        assert {r["run_id"] for r in store.rows()} == {"2", "3"} and len(store.rows("history")) == 3


def test_copying_the_store_file_alone_copies_every_committed_row(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.add(fake("1", "a"))
    store.add(fake("2", "b"))
    shutil.copy(tmp_path / "results.sqlite", tmp_path / "copy.sqlite")  # the runner is still open (or killed)
    assert len(sqlite3.connect(tmp_path / "copy.sqlite").execute("SELECT * FROM history").fetchall()) == 2
    backup = store.backup()
    store.close()
    assert len(ResultStore(backup, readonly=True).rows("history")) == 2


def test_collect_skips_each_bad_result_file_by_name_and_keeps_the_good_ones(tmp_path):
    runs = tmp_path / "runs"
    bad = {"empty-object": b"{}", "list": b"[]", "latin1": "r\xe9sultat".encode("latin-1"),
           "truncated": b'{"run_id": "9", "config_', "good": json.dumps(fake("1", "a")).encode()}
    for name, content in bad.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_bytes(content)
    with ResultStore(tmp_path / "results.sqlite") as store:
        done = store.collect([runs])
    assert done.added == 1
    reasons = {Path(p).parent.name: why for p, why in done.skipped}
    assert set(reasons) == {"empty-object", "list", "latin1", "truncated"}
    assert "no run_id" in reasons["empty-object"] and "JSON list" in reasons["list"]
    assert "UTF-8" in reasons["latin1"] and "truncated" in reasons["truncated"]


FILL_THE_DISK = """
import sys
from bench.store import ResultStore, StoreError
path, stored = sys.argv[1], 0
store = ResultStore(path)
try:
    for i in range(10000):
        store.add({"run_id": str(i), "config_hash": str(i), "status": "ok", "created_at": str(i), "pad": "x" * 4000},
                  f"runs/{i}/result.json")
        stored += 1
except StoreError as err:
    print(stored, err, sep="\\n")
store.close()
"""


def test_a_full_disk_keeps_every_committed_row_and_says_where_the_next_one_is(tmp_path):
    done = on_tiny_disk(tmp_path, FILL_THE_DISK, f"cp '{{disk}}/results.sqlite' '{tmp_path}/copy.sqlite' && "
                        f"(cp '{{disk}}/results.sqlite-wal' '{tmp_path}/copy.sqlite-wal' || true)")
    assert done.returncode == 0, done.stderr
    count, message = done.stdout.split("\n", 1)
    assert 10 < int(count) < 10000
    assert "full" in message and f"this one stays in runs/{count}/result.json" in message
    # a checkpoint cut short by the full disk leaves the newest pages in the WAL: the pair holds every row
    with ResultStore(tmp_path / "copy.sqlite") as store:
        assert len(store.rows("history")) == int(count)


def readonly_runner(results: Path):
    """A function that runs a command with ``results`` read-only: by permission bits for a normal user; for
    root (who ignores them) on a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        os.chmod(results, 0o555)
        return lambda cmd: subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{results}' '{results}'"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot make a read-only directory here (root without mount namespaces)")
    mount = f"mount --bind -o ro '{results}' '{results}' && exec \"$@\""
    return lambda cmd: subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", *cmd], cwd=REPO,
                                      capture_output=True, text=True)


def test_report_export_and_dry_run_work_on_a_read_only_results_directory(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    row = {**fake("1", "a"), "variant": "m2f", "encoder": "m2f", "backbone": "r50", "dataset": "ade20k", "height": 64,
           "width": 64, "batch": 1, "device": "cpu", "cpu_name": "cpu", "precision": "fp32", "mode": "eager",
           "gmacs_total": 1.0, "gmacs_pixel_decoder": 0.5}
    with ResultStore(results / "results.sqlite") as store:
        store.add(row)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in results.iterdir())
    sweep = write_sweep(tmp_path)
    run = readonly_runner(results)
    try:
        probe = run(["touch", str(results / "probe")])
        assert probe.returncode != 0, "the directory is not read-only"
        commands = [["-m", "reports", "build", f"results={results}", f"report.out={out / 'rep'}"],
                    ["-m", "reports", "export", f"results={results}", f"export={out / 'exp'}"],
                    ["-m", "bench.sweep", sweep, "--results", str(results), "--dry-run"]]
        for cmd in commands:
            done = run([sys.executable, *cmd])
            assert done.returncode == 0, done.stderr
        assert (out / "rep" / "index.html").exists() and (out / "exp" / "results.csv").exists()
        assert "1 to run" in done.stderr
        assert sorted((p.name, p.stat().st_mtime_ns) for p in results.iterdir()) == before
    finally:
        os.chmod(results, 0o755)


# ------------------------------------------------------------------ paths and layout
def test_relative_results_with_odd_characters_from_another_directory(tmp_path):
    sweep = write_sweep(tmp_path)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-m", "bench.sweep", sweep, "--results", "r,e's", "--report"], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    results = cwd / "r,e's"
    (row,) = stored(results)
    assert row["status"] == "ok" and not (REPO / "r,e's").exists()
    assert (results / "report" / "index.html").exists()  # the report of this results directory
    # a forced re-run keeps the first attempt: every history source still exists
    assert sweep_main([sweep, "--results", str(results), "--force"]) == 0
    with ResultStore(results / "results.sqlite", readonly=True) as store:
        sources = [r[0] for r in store.conn.execute("SELECT source FROM history")]
    assert len(sources) == 2 and all(Path(s).exists() for s in sources)
    assert [p.name for p in attempts(results)] == ["attempt-001", "attempt-002"]
    assert attempts(results)[0].parent.name == row["config_hash"]


def test_the_cluster_path_submitit_local_then_collect(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = Path(write_sweep(tmp_path, "m2f,rt_m2f"))
    multirun = tmp_path / "multirun"
    done = subprocess.run([sys.executable, "-m", "bench", "--config-dir", str(sweep.parent), "--config-name",
                           sweep.stem, "hydra/launcher=submitit_local", f"hydra.sweep.dir={multirun}",
                           "hydra.launcher.timeout_min=10"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from reports.__main__ import main as reports_main

    results = tmp_path / "results"
    assert reports_main(["collect", f"results={results}", f"runs={multirun}"]) == 0
    rows = stored(results, "results")
    assert sorted(r["variant"] for r in rows) == ["m2f", "rt_m2f(e1)"] and all(r["status"] == "ok" for r in rows)
