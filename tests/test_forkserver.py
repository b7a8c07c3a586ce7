"""The sweep's fork server: a job forked from it is the job a fresh interpreter would run, in its own
process group; the server survives what its jobs do, and is started again when it dies."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from bench.forkserver import ForkServer
from bench.sweep import REPO, job_command, make_job, run_one, spawn

pytestmark = pytest.mark.slow  # job processes

TINY = ["backbone=r50", "input=ade20k", "input.height=64", "input.width=64", "encoder=m2f"]


@pytest.fixture
def server():
    srv = ForkServer(REPO)
    yield srv
    srv.close()


def run_tiny(tmp_path: Path, name: str, server: ForkServer | None, *extra: str, timeout: float = 300
             ) -> tuple[int | None, dict | None]:
    out = tmp_path / name
    out.mkdir()
    argv = job_command(make_job([*TINY, *extra]))
    env = {"ENCBENCH_JOB_DIR": str(out), "ENCBENCH_FLOPS_CACHE": str(tmp_path / f"cache_{name}")}
    log = out / "job.log"
    code = server.run(argv, env, log, timeout) if server else spawn(argv, env, log, timeout)
    result = out / "result.json"
    return code, json.loads(result.read_text()) if result.exists() else None


def test_a_forked_job_gives_the_row_a_fresh_interpreter_gives(tmp_path, server):
    forked_code, forked = run_tiny(tmp_path, "forked", server, "measure=[flops,memory]")
    fresh_code, fresh = run_tiny(tmp_path, "fresh", None, "measure=[flops,memory]")
    assert forked_code == fresh_code == 0
    assert forked["status"] == fresh["status"] == "ok"
    for key in ("config_hash", "params_total", "gmacs_total", "gflops_total", "gmacs_pixel_decoder",
                "flop_coverage", "mem_peak_alloc_mb", "code_fingerprint", "torch_version"):
        assert forked[key] == fresh[key], key
    assert forked["run_id"] != fresh["run_id"]
    # the job printed its row on stdout: it went to /dev/null, not into the server's protocol
    again_code, again = run_tiny(tmp_path, "again", server, "measure=[flops]")
    assert again_code == 0 and again["gmacs_total"] == forked["gmacs_total"]


def test_exit_codes_are_those_of_python_m_bench_and_a_bad_job_leaves_nothing_behind(tmp_path, server):
    code, row = run_tiny(tmp_path, "bad", server, "measure=[nonsense]")
    assert code == 2 and row["status"] == "invalid"  # as python -m bench exits for an invalid configuration
    assert "nonsense" in (tmp_path / "bad" / "job.log").read_text()  # the reason, on the job's stderr
    code, row = run_tiny(tmp_path, "after", server, "measure=[memory]")
    assert code == 0 and row["status"] == "ok"


def test_the_child_has_its_own_group_and_dies_with_the_server(tmp_path):
    srv = ForkServer(REPO)
    out = tmp_path / "slow"
    out.mkdir()
    argv = [*TINY, "measure=[latency]", "timing.min_seconds=120", f"out_dir={out}", f"hydra.run.dir={out}"]
    srv.proc.stdin.write(json.dumps({"argv": argv, "env": {}, "log": str(out / "job.log"), "cwd": str(REPO)}) + "\n")
    srv.proc.stdin.flush()
    child = json.loads(srv.proc.stdout.readline())["pid"]
    time.sleep(1.0)
    assert os.getpgid(child) == child != os.getpgid(srv.proc.pid)
    srv.proc.kill()
    srv.proc.wait()
    assert ended(child), "the job outlived its server"


def ended(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` has exited (or is a zombie waiting for init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_a_timeout_stops_the_job_and_the_server_runs_the_next(tmp_path, server):
    t0 = time.monotonic()
    code, row = run_tiny(tmp_path, "slow", server, "measure=[latency]", "timing.min_seconds=120", timeout=3)
    assert code is None and row is None and time.monotonic() - t0 < 60
    code, row = run_tiny(tmp_path, "next", server, "measure=[memory]")
    assert code == 0 and row["status"] == "ok"


def test_a_job_killed_by_a_signal_reports_it(tmp_path, server):
    out = tmp_path / "killed"
    out.mkdir()
    argv = [*TINY, "measure=[latency]", "timing.min_seconds=120", f"out_dir={out}", f"hydra.run.dir={out}"]
    def kill_soon() -> None:
        while server.pid is None:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(server.pid, signal.SIGKILL)

    threading.Thread(target=kill_soon, daemon=True).start()
    assert server.run(argv, {}, out / "job.log", 300) == -signal.SIGKILL


def test_a_dead_server_fails_its_job_with_a_row_and_is_restarted(tmp_path, server):
    job = make_job([*TINY, "measure=[latency]", "timing.min_seconds=120"])
    attempt = tmp_path / "attempt"
    attempt.mkdir()
    def kill_server() -> None:
        while server.pid is None:
            time.sleep(0.05)
        time.sleep(1.0)
        server.proc.kill()

    threading.Thread(target=kill_server, daemon=True).start()
    row = run_one(job, attempt, tmp_path / "cache", 300, server)
    assert row["status"] == "failed" and "fork server was killed by signal 9" in row["error"]
    assert json.loads((attempt / "result.json").read_text())["run_id"] == row["run_id"]
    code, row = run_tiny(tmp_path, "next", server, "measure=[memory]")
    assert code == 0 and row["status"] == "ok"


def test_an_interrupt_before_the_pid_is_read_still_stops_the_job(tmp_path, server, monkeypatch):
    out = tmp_path / "early"
    out.mkdir()
    argv = [*TINY, "measure=[latency]", "timing.min_seconds=120", f"out_dir={out}", f"hydra.run.dir={out}"]
    real, calls = server._read, []

    def interrupted(timeout):  # the runner's signal arrives while it waits for the server's {"pid"}
        calls.append(timeout)
        if len(calls) == 1:
            time.sleep(1.0)  # the child exists by now
            raise KeyboardInterrupt
        return real(timeout)

    monkeypatch.setattr(server, "_read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.run(argv, {}, out / "job.log", 300)
    monkeypatch.setattr(server, "_read", real)
    assert server.pid is None and server.proc.poll() is None  # the job was stopped, the server lives on
    assert not Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    code, row = run_tiny(tmp_path, "next", server, "measure=[memory]")
    assert code == 0 and row["status"] == "ok"
