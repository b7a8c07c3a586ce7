"""A GPU visit rehearsed on CPU: the hard time limit stops the whole process group, and what is packed fits
the limits of what a lent machine returns (and a breach of each limit is named)."""

from __future__ import annotations

import json
import os
import sys
import tarfile
import time

import pytest

from scripts import gpu_visit


def test_returnable_names_each_breach(tmp_path):
    assert gpu_visit.returnable(tmp_path) == []
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.json").write_text("{}")
    (tmp_path / "odd name.json").write_text("{}")
    (tmp_path / "big.bin").write_bytes(b"\0" * (gpu_visit.MAX_FILE + 1))
    for i in range(6):
        (tmp_path / f"f{i}.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f0.txt")
    bad = "\n".join(gpu_visit.returnable(tmp_path))
    assert "10 files (at most 8)" in bad and "deep.json: more than 2 folders down" in bad
    assert "odd name.json: a name with characters" in bad and f"big.bin: {gpu_visit.MAX_FILE + 1} bytes" in bad
    assert "link: a link" in bad


def test_the_archive_leaves_out_big_files_only_when_the_whole_would_not_fit(tmp_path, monkeypatch):
    src = tmp_path / "local"
    (src / "cache" / "triton").mkdir(parents=True)
    (src / "cache" / "triton" / "kernel.bin").write_bytes(os.urandom(5000))  # caches never travel
    (src / "runs").mkdir()
    (src / "runs" / "trace.json").write_bytes(os.urandom(3000))
    (src / "core.csv").write_text("shapes,ms\n")
    left = gpu_visit.archive(src, tmp_path / "all.tar.gz", set())
    with tarfile.open(tmp_path / "all.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["core.csv", "runs/trace.json"] and left == []
    monkeypatch.setattr(gpu_visit, "MAX_FILE", 2000)  # now the incompressible trace does not fit
    monkeypatch.setattr(gpu_visit, "BIG_FILE", 1000)
    left = gpu_visit.archive(src, tmp_path / "small.tar.gz", set())
    with tarfile.open(tmp_path / "small.tar.gz") as tar:
        assert tar.getnames() == ["core.csv"] and left == ["runs/trace.json (3000 bytes)"]


def test_the_budget_stops_the_validation_and_its_children_and_the_results_are_packed(tmp_path):
    local, out = tmp_path / "local", tmp_path / "out"
    child = ("import json, subprocess, sys, time, pathlib; "
             f"d = pathlib.Path({str(local)!r}); "
             "(d / 'summary.json').write_text(json.dumps({'steps': {'environment': {'status': 'ok'}}})); "
             "(d / 'step.json').write_text('{}'); "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             "(d / 'grandchild.pid').write_text(str(p.pid)); "
             "print('started', flush=True); time.sleep(120)")
    t0 = time.monotonic()
    visit = gpu_visit.validate(local, 4.0, [sys.executable, "-c", child])
    assert visit["stopped_at_budget"] and visit["returncode"] != 0 and time.monotonic() - t0 < 20
    grandchild = int((local / "grandchild.pid").read_text())
    time.sleep(0.5)
    assert not alive(grandchild)  # the whole process group went down
    visit = gpu_visit.pack(local, out, visit)
    assert visit["breaches"] == [] and sorted(p.name for p in out.iterdir()) == [
        "summary.json", "validate.log", "validate.tar.gz", "visit.json"]
    assert b"started" in (out / "validate.log").read_bytes()
    assert json.loads((out / "visit.json").read_text())["stopped_at_budget"] is True
    with tarfile.open(out / "validate.tar.gz") as tar:
        assert "step.json" in tar.getnames() and "summary.json" not in tar.getnames()


def alive(pid: int) -> bool:
    """Running (a killed process whose new parent has not reaped it yet is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_deadline_past_the_budget_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_visit.main(["--out", "/tmp/unused", "--budget", "100", "--deadline", "100"])
    assert "must be below --budget" in capsys.readouterr().err


@pytest.mark.slow
def test_rehearsal_of_a_visit(tmp_path):
    """The prepared command end to end on CPU (the steps' own rehearsals are tests/test_gpu_validate.py)."""
    visit = gpu_visit.main(["--smoke", "--out", str(tmp_path / "out"), "--local", str(tmp_path / "local"),
                            "--budget", "300", "--deadline", "280", "--steps", "environment", "transformers"])
    assert visit["returncode"] == 0 and not visit["stopped_at_budget"] and visit["breaches"] == []
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {k: v["status"] for k, v in summary["steps"].items()} == {"environment": "ok", "transformers": "ok"}
    assert summary["ratios"]["m2f_vs_transformers_latency"] > 0
    with tarfile.open(tmp_path / "out" / "validate.tar.gz") as tar:
        assert {"environment.json", "transformers.json", "baseline.json"} <= set(tar.getnames())
