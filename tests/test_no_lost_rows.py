"""Faults that once lost or mislabelled rows: a rebuild or collect beside a running sweep, code changed
under a fork server or a job, a backup killed or failing half-way, a disk too full for a lock's note."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest

from bench import fingerprint as fp
from bench.locks import FileLock, LockHeld, results_lock
from bench.store import PARTIAL, ResultStore, StoreError
from bench.sweep import REPO, job_command, make_job
from reports.__main__ import EXIT_LOCKED
from reports.__main__ import main as reports_main
from tests.conftest import on_tiny_disk

ROW = {"run_id": "r1", "config_hash": "c1", "status": "ok", "created_at": "2026-01-01T00:00:00"}


def store_with_a_row(results):
    (results / "runs" / "c1" / "attempt-001").mkdir(parents=True)
    (results / "runs" / "c1" / "attempt-001" / "result.json").write_text(
        '{"run_id": "r1", "config_hash": "c1", "status": "ok", "created_at": "2026-01-01T00:00:00"}')
    with ResultStore(results / "results.sqlite") as store:
        store.add(ROW, str(results / "runs" / "c1" / "attempt-001" / "result.json"))


@pytest.mark.parametrize("command", ["rebuild", "collect"])
def test_rebuild_and_collect_refuse_while_a_sweep_holds_the_results_directory(tmp_path, capsys, command):
    results = tmp_path / "results"
    store_with_a_row(results)
    lock = results_lock(results).acquire()  # as a running sweep holds it
    before = sorted(p.name for p in results.iterdir())
    stamp = (results / "results.sqlite").stat().st_mtime_ns
    try:
        assert reports_main([command, f"results={results}"]) == EXIT_LOCKED
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"{command} writes the store" in err and f"PID {os.getpid()}" in err
    # the live store was neither renamed nor written
    assert sorted(p.name for p in results.iterdir()) == before
    assert (results / "results.sqlite").stat().st_mtime_ns == stamp
    assert reports_main([command, f"results={results}"]) == 0  # once the sweep has ended


class FailingBackup:
    """A connection whose online backup fails half-way (as on a full disk)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def backup(self, target: sqlite3.Connection) -> None:
        target.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


def test_a_failed_backup_leaves_nothing_that_looks_like_one(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.add(ROW)
    real, store.conn = store.conn, FailingBackup(store.conn)
    with pytest.raises(StoreError, match="cannot write a backup .* disk is full.*the store itself is untouched"):
        store.backup()
    store.conn = real
    assert list((tmp_path / "backups").iterdir()) == []
    store.close()


def test_what_a_killed_backup_left_is_removed_and_never_counted_among_the_copies(tmp_path):
    backups = tmp_path / "backups"
    backups.mkdir()
    for i in range(5):  # five complete copies, older than any new one
        (backups / f"results-20260101-00000{i}-000000.sqlite").write_bytes(b"copy")
    killed = backups / f"results-20990101-000000-000000.sqlite{PARTIAL}"  # newest name, but never finished
    killed.write_bytes(b"half")
    (backups / f"{killed.name}-journal").write_bytes(b"journal")
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.add(ROW)
        new = store.backup()
    names = sorted(p.name for p in backups.iterdir())
    assert len(names) == 5 and new.name in names and not any(PARTIAL in n for n in names)
    assert "results-20260101-000000-000000.sqlite" not in names  # the oldest complete copy made room
    with ResultStore(new, readonly=True) as copy:
        assert [r["run_id"] for r in copy.rows()] == ["r1"]


def test_a_lock_whose_note_cannot_be_written_still_holds(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    lock = FileLock(tmp_path / ".sweep.lock", "the results directory").acquire()
    try:
        with pytest.raises(LockHeld, match="another process"):
            FileLock(tmp_path / ".sweep.lock", "the results directory").acquire()
    finally:
        lock.release()


FULL_BACKUP = """
import sys
from bench.store import ResultStore, StoreError
store = ResultStore(sys.argv[1])
try:  # fill the disk, then take a copy of what fits
    for i in range(10000):
        store.add({"run_id": str(i), "config_hash": str(i), "status": "ok", "created_at": str(i), "pad": "x" * 4000})
except StoreError:
    pass
store.close()
store = ResultStore(sys.argv[1])
try:
    store.backup()
    print("no error")
except StoreError as err:
    print(err)
store.close()
"""


def test_a_backup_on_a_full_disk_is_a_store_error_and_leaves_no_partial_copy(tmp_path):
    done = on_tiny_disk(tmp_path, FULL_BACKUP, "ls -a '{disk}/backups'")
    assert done.returncode == 0, done.stderr
    message, listing = done.stdout.split("\n", 1)
    assert "cannot write a backup" in message and "full" in message, done.stdout
    assert listing.split() == [".", ".."]  # the half-written copy was removed


def test_a_job_whose_code_changed_on_disk_while_it_ran_is_not_stored_as_measured(tmp_path, monkeypatch):
    from bench.config import compose
    from bench.job import run_job

    imported = fp.code_fingerprint()
    monkeypatch.setattr(fp, "fingerprint", lambda *a, **k: "0123456789abcdef")  # the files, changed
    cfg = compose(["backbone=r50", "input=ade20k", "input.height=64", "input.width=64", "measure=memory"])
    row = run_job(cfg, tmp_path)
    assert row["status"] == "failed" and row["code_fingerprint"] == imported
    assert f"imported as {imported}, now 0123456789abcdef" in row["error"]


@pytest.mark.slow
def test_a_fork_server_whose_code_changed_on_disk_is_started_again(tmp_path, monkeypatch):
    from bench.forkserver import ForkServer

    server = ForkServer(REPO)
    try:
        first = server.proc.pid
        assert server.fingerprint == fp.fingerprint()  # the jobs carry the code the server imported
        argv = job_command(make_job(["measure=[nonsense]"]))  # a job that ends at once
        env = {"ENCBENCH_FLOPS_CACHE": str(tmp_path / "cache")}
        assert server.run(argv, {**env, "ENCBENCH_JOB_DIR": str(tmp_path / "a")}, tmp_path / "a.log", 120) == 2
        assert server.proc.pid == first  # same code: the same server
        monkeypatch.setattr(fp, "fingerprint", lambda *a, **k: "0123456789abcdef")
        assert server.run(argv, {**env, "ENCBENCH_JOB_DIR": str(tmp_path / "b")}, tmp_path / "b.log", 120) == 2
        assert server.proc.pid != first  # new code: a new server imports it
    finally:
        server.close()


def test_collect_finds_single_jobs_where_hydra_puts_them(tmp_path, monkeypatch, capsys):
    import reports.__main__ as cli

    outputs = tmp_path / "outputs" / "2026-12-05" / "10-00-00"  # python -m bench's default job folder
    outputs.mkdir(parents=True)
    (outputs / "result.json").write_text('{"run_id": "s1", "config_hash": "c9", "status": "ok"}')
    monkeypatch.setattr(cli, "SINGLE_RUNS", (tmp_path / "multirun", tmp_path / "outputs"))
    assert reports_main(["collect", f"results={tmp_path / 'results'}"]) == 0
    assert "collected 1 new rows" in capsys.readouterr().out
    with ResultStore(tmp_path / "results" / "results.sqlite", readonly=True) as store:
        assert [r["run_id"] for r in store.rows()] == ["s1"]


def test_a_lock_left_by_another_host_is_not_said_to_be_dead(tmp_path):
    import json

    path = tmp_path / ".sweep.lock"
    path.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": 0, "command": "bench.sweep cpu"}))
    lock = FileLock(path, "the results directory").acquire()
    try:
        note = lock.stale_note()
    finally:
        lock.release()
    assert "PID 4242 on elsewhere" in note and "no longer running" not in note
    assert "cannot be seen from here" in note
