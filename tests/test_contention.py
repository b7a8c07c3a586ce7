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
