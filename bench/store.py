"""The results store: SQLite (WAL), one transaction per row, keyed by ``config_hash``.

``history`` keeps every row ever collected (unique ``run_id``: collecting twice changes nothing).
``results`` holds one row per ``config_hash``: the latest ``ok`` row, or the latest attempt while
no attempt succeeded. A failed re-run never replaces a measured row; ``force`` re-runs do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bench.row import to_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT PRIMARY KEY, config_hash TEXT, status TEXT, sweep TEXT, created_at TEXT, source TEXT, row TEXT);
CREATE TABLE IF NOT EXISTS results (
    config_hash TEXT PRIMARY KEY, run_id TEXT, status TEXT, sweep TEXT, created_at TEXT, row TEXT);
CREATE INDEX IF NOT EXISTS history_hash ON history(config_hash);
"""


class ResultStore:
    """A SQLite file of result rows (created on first use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add(self, row: Mapping[str, Any], source: str | None = None) -> bool:
        """Store one row in one transaction; False if this run_id was already collected."""
        if not row.get("run_id") or not row.get("config_hash"):
            raise ValueError("a result row needs run_id and config_hash")
        blob = to_json(row)
        with self.conn:  # BEGIN ... COMMIT
            self.conn.execute("BEGIN IMMEDIATE")
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO history VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row["run_id"], row["config_hash"], row.get("status"), row.get("sweep"), row.get("created_at"),
                 source, blob))
            if cur.rowcount == 0:
                return False
            old = self.conn.execute("SELECT status FROM results WHERE config_hash = ?",
                                    (row["config_hash"],)).fetchone()
            if old is None or row.get("status") == "ok" or old[0] != "ok":
                self.conn.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                                  (row["config_hash"], row["run_id"], row.get("status"), row.get("sweep"),
                                   row.get("created_at"), blob))
        return True

    def status(self, config_hash: str) -> str | None:
        found = self.conn.execute("SELECT status FROM results WHERE config_hash = ?", (config_hash,)).fetchone()
        return found[0] if found else None

    def rows(self, table: str = "results") -> list[dict[str, Any]]:
        if table not in ("results", "history"):
            raise ValueError(f"table must be 'results' or 'history', got {table!r}")
        return [json.loads(r[0]) for r in self.conn.execute(f"SELECT row FROM {table} ORDER BY created_at, rowid")]

    def frame(self, table: str = "results") -> pd.DataFrame:
        return pd.DataFrame(self.rows(table))

    def _flat(self, table: str) -> pd.DataFrame:
        """The table as a frame with its mapping columns JSON-encoded (flat files hold no dicts)."""
        df = self.frame(table)
        for col in ("unsupported_ops", "artifacts"):
            if col in df:
                df[col] = df[col].map(json.dumps)
        return df

    def collect(self, roots: Iterable[Path | str]) -> tuple[int, int]:
        """Add every ``result.json`` under ``roots``; returns (added, already present)."""
        added = seen = 0
        for root in roots:
            for path in sorted(Path(root).rglob("result.json")):
                try:
                    row = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue  # a half-written file: the atomic writer never leaves one, skip it
                if self.add(row, str(path)):
                    added += 1
                else:
                    seen += 1
        return added, seen

    def export(self, out_dir: Path | str) -> list[Path]:
        """``results.csv`` and ``results.parquet`` (plus ``history.csv``) in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        df, hist = self._flat("results"), self._flat("history")
        df.to_csv(out / "results.csv", index=False)
        df.to_parquet(out / "results.parquet", index=False)
        hist.to_csv(out / "history.csv", index=False)
        return [out / "results.csv", out / "results.parquet", out / "history.csv"]
