"""The results store: measured rows kept, history, collect and export."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from bench.store import ResultStore


def row(run_id: str, h: str, status: str = "ok", **kw) -> dict:
    return {"run_id": run_id, "config_hash": h, "status": status, "created_at": run_id, "sweep": "t", **kw}


def test_store_keeps_measured_rows_and_history(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.add(row("1", "a", "failed"))
        assert store.add(row("2", "a", "ok", x=1.0))
        assert store.add(row("3", "a", "failed"))       # a later failure never hides a measurement
        assert not store.add(row("2", "a", "ok", x=1.0))  # the same run collected twice: no-op
        assert store.add(row("4", "a", "ok", x=2.0))      # a forced re-measurement replaces it
        assert store.add(row("5", "b", "oom", x=float("nan")))
        assert store.status("a") == "ok" and store.status("b") == "oom" and store.status("c") is None
        assert [r["run_id"] for r in store.rows()] == ["4", "5"]
        assert len(store.rows("history")) == 5
        assert store.rows()[1]["x"] is None  # NaN stored as null
        assert sqlite3.connect(tmp_path / "r.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        paths = store.export(tmp_path / "export")
    assert pd.read_csv(paths[0])["run_id"].astype(str).tolist() == ["4", "5"]
    assert len(pd.read_parquet(paths[1])) == 2
    with pytest.raises(ValueError, match="run_id and config_hash"):
        ResultStore(tmp_path / "r.sqlite").add({"status": "ok"})
