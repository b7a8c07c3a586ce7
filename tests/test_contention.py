"""Contention during a timed window: another process spinning a core is seen; this process's own work is not
counted as someone else's."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from bench import contention
from bench.contention import CpuWindow

pytestmark = pytest.mark.skipif(contention.machine_jiffies() is None, reason="needs /proc/stat (Linux)")


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_busy_process_started_during_the_window_is_seen():
    with CpuWindow() as w:
        busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 1.5\n"
                                 "while time.time() < end: pass"])
        busy.wait()
    assert w.columns()["cpu_others_cores"] > 0.5  # about one core, for most of the window


def test_own_work_is_not_contention():
    with CpuWindow() as w:
        spin(1.0)
    cols = w.columns()
    assert cols["cpu_others_cores"] < 0.5 and 0 <= cols["cpu_steal_frac"] <= 1


def test_without_proc_stat_the_columns_are_nan(monkeypatch, tmp_path):
    monkeypatch.setattr(contention, "PROC_STAT", tmp_path / "absent")
    with CpuWindow() as w:
        pass
    assert all(math.isnan(v) for v in w.columns().values())


def test_a_row_keeps_the_worst_window():
    quiet, busy = CpuWindow(), CpuWindow()
    quiet.columns = lambda: {"cpu_others_cores": 0.01, "cpu_steal_frac": 0.0}
    busy.columns = lambda: {"cpu_others_cores": 0.9, "cpu_steal_frac": math.nan}
    assert contention.worst([quiet, busy]) == {"cpu_others_cores": 0.9, "cpu_steal_frac": 0.0}


def test_a_loop_timed_beside_a_busy_process_is_timed_again_and_the_quiet_run_kept():
    spin_s = "import time\nend = time.time() + 1.2\nwhile time.time() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin_s])
    time.sleep(0.2)  # the spinner is running when the first slice starts
    runs = []

    def loop():
        runs.append(time.perf_counter())
        time.sleep(1.5)  # this process idles: whatever is busy is someone else
        return len(runs)

    result, window, retimed = contention.quiet_loop(loop, cores=0.25, retries=3)
    busy.wait()
    assert retimed >= 1 and result == len(runs) == retimed + 1  # the last (quiet) run is the one kept
    assert window.columns()["cpu_others_cores"] < 0.25


def test_a_quiet_loop_runs_once_and_retries_are_bounded(monkeypatch):
    calls = []
    assert contention.quiet_loop(lambda: calls.append(1) or "ok", cores=0.25, retries=2)[::2] == ("ok", 0)
    monkeypatch.setattr(CpuWindow, "columns", lambda self: {"cpu_others_cores": 3.0, "cpu_steal_frac": 0.0})
    calls.clear()
    assert contention.quiet_loop(lambda: calls.append(1) or len(calls), cores=0.25, retries=2)[2] == 2
    assert len(calls) == 3  # never more than 1 + retime runs, however busy the machine stays
