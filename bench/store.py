"""The results store: SQLite (WAL), one transaction per row, keyed by ``config_hash``.

``history`` keeps every row ever collected (unique ``run_id``: collecting twice changes nothing).
``results`` holds one row per ``config_hash``: the latest ``ok`` row, or the latest attempt while
no attempt succeeded. A failed re-run never replaces a measured row; ``force`` re-runs do.

Safety net (docs/reliability.md): the file is checked on open (an empty or corrupt file is an
error naming the recovery command, never a new store); every row is checkpointed into the main
file, so copying ``results.sqlite`` alone copies every committed row; ``backup`` takes an online
copy; ``readonly=True`` opens without writing anything (a read-only directory works);
``rebuild_store`` recreates the store from the run directories' ``result.json`` files.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from bench.row import to_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT PRIMARY KEY, config_hash TEXT, status TEXT, sweep TEXT, created_at TEXT, source TEXT, row TEXT);
CREATE TABLE IF NOT EXISTS results (
    config_hash TEXT PRIMARY KEY, run_id TEXT, status TEXT, sweep TEXT, created_at TEXT, row TEXT);
CREATE INDEX IF NOT EXISTS history_hash ON history(config_hash);
CREATE TABLE IF NOT EXISTS accuracy (run_id TEXT PRIMARY KEY, key TEXT, created_at TEXT, row TEXT);
"""
BACKUPS_KEPT = 5
PARTIAL = ".partial"  # a backup being written
ACCURACY_KEYS = ("run_id", "key")
EVALUATIONS = "evaluations"  # beside the store: one JSON per stored evaluation (what a rebuild reads back)


class StoreError(RuntimeError):
    """The store cannot be used as it is; the message names the file and what to do."""


def recovery_hint(path: Path) -> str:
    return (f"recover it from the run directories with: python -m reports rebuild results={path.parent} "
            f"(the damaged file is kept beside it), or restore a copy from {path.parent / 'backups'}")


@dataclass
class Collected:
    """What a ``collect`` did: rows added, rows already present, files skipped with the reason."""

    added: int = 0
    seen: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ResultStore:
    """A SQLite file of result rows (created on first use unless ``readonly``)."""

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        self.path = Path(path).absolute()
        self.readonly = readonly
        if self.path.exists() and self.path.stat().st_size == 0:
            raise StoreError(f"the results store {self.path} is an empty (0-byte) file, not a store; "
                             + recovery_hint(self.path))
        if readonly and not self.path.exists():
            raise StoreError(f"no results store at {self.path}; run a sweep first, or name the results "
                             "directory with results=DIR")
        try:
            self.conn = self._connect()
            self._check()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"the results store {self.path} cannot be read ({err}); "
                             + recovery_hint(self.path)) from err

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = f"file:{quote(str(self.path))}?mode=ro"
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:  # a read-only directory: no -shm can be made, read it as is
                return sqlite3.connect(f"file:{quote(str(self.path))}?immutable=1", uri=True, isolation_level=None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        return conn

    def _check(self) -> None:
        found = self.conn.execute("PRAGMA quick_check").fetchone()
        if not found or found[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {found[0] if found else 'no answer'}")
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"history", "results"} <= tables:
            raise sqlite3.DatabaseError(f"not an encbench store (tables: {sorted(tables) or 'none'})")

    def close(self) -> None:
        if not self.readonly:
            with contextlib.suppress(sqlite3.OperationalError):  # a full disk: rows are committed, the WAL stays
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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
        try:
            added = self._insert(row, blob, source)
        except sqlite3.OperationalError as err:
            if "full" not in str(err) and "I/O" not in str(err):
                raise
            raise StoreError(f"cannot write to the results store {self.path} ({err}); every row stored before is "
                             f"intact, and this one stays in {source or 'its result.json'}: free space and run "
                             "again, it is collected first") from err
        # the main file holds every committed row; on a full disk the row stays committed in the WAL beside it
        with contextlib.suppress(sqlite3.OperationalError):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return added

    def _insert(self, row: Mapping[str, Any], blob: str, source: str | None) -> bool:
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

    def add_accuracy(self, row: Mapping[str, Any]) -> bool:
        """Store one measured-accuracy row (``python -m bench.evaluate``); False if this run_id is stored."""
        if not row.get("run_id") or not row.get("key"):
            raise ValueError("an accuracy row needs run_id and key")
        with self.conn:
            cur = self.conn.execute("INSERT OR IGNORE INTO accuracy VALUES (?, ?, ?, ?)",
                                    (row["run_id"], row["key"], row.get("created_at"), to_json(row)))
        return cur.rowcount == 1

    def accuracy(self) -> pd.DataFrame:
        """The latest measured-accuracy row of each key (every evaluation stays in the table)."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "accuracy" not in tables:  # a store written before accuracy rows existed, opened read-only
            return pd.DataFrame()
        rows = [json.loads(r[0]) for r in self.conn.execute("SELECT row FROM accuracy ORDER BY created_at, rowid")]
        frame = pd.DataFrame(rows)
        return frame.drop_duplicates("key", keep="last").reset_index(drop=True) if len(frame) else frame

    def status(self, config_hash: str) -> str | None:
        found = self.conn.execute("SELECT status FROM results WHERE config_hash = ?", (config_hash,)).fetchone()
        return found[0] if found else None

    def measured(self) -> dict[str, str | None]:
        """``config_hash`` -> ``code_fingerprint`` of every configuration whose stored row is ok."""
        query = "SELECT config_hash, json_extract(row, '$.code_fingerprint') FROM results WHERE status = 'ok'"
        return dict(self.conn.execute(query).fetchall())

    def count(self, table: str = "history") -> int:
        if table not in ("results", "history"):
            raise ValueError(f"table must be 'results' or 'history', got {table!r}")
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def sources(self) -> set[str]:
        """The files rows were collected from."""
        return {r[0] for r in self.conn.execute("SELECT source FROM history WHERE source IS NOT NULL")}

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

    def collect(self, roots: Iterable[Path | str], skip_known: bool = True) -> Collected:
        """Add every ``result.json`` under ``roots`` (files already collected are not re-read)."""
        done = Collected()
        known = self.sources() if skip_known else set()
        for path in result_files(roots):
            if str(path) in known:
                done.seen += 1
                continue
            row, reason = read_row(path)
            if row is None:
                done.skipped.append((str(path), reason))
            elif self.add(row, str(path)):
                done.added += 1
            else:
                done.seen += 1
        return done

    def backup(self, directory: Path | str | None = None, keep: int = BACKUPS_KEPT) -> Path:
        """An online copy (SQLite's backup API) in ``directory`` (default: ``backups/`` beside the store);
        only the newest ``keep`` copies are kept. The copy is written under a ``.partial`` name and renamed
        when complete: a killed or failed backup (and what an earlier one left) never counts as a copy.
        ``StoreError`` when it cannot be written (e.g. a full disk)."""
        out = Path(directory) if directory else self.path.parent / "backups"
        dest = out / f"{self.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.sqlite"
        partial = dest.with_name(dest.name + PARTIAL)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for leftover in out.glob(f"{self.path.stem}-*.sqlite{PARTIAL}*"):  # from a backup that was killed
                leftover.unlink()
            target = sqlite3.connect(partial)
            try:
                with target:
                    self.conn.backup(target)
            finally:
                target.close()
            partial.replace(dest)
        except (OSError, sqlite3.Error) as err:
            for leftover in out.glob(f"{partial.name}*"):
                leftover.unlink(missing_ok=True)
            raise StoreError(f"cannot write a backup of {self.path} into {out} ({err}); the store itself is "
                             "untouched: free space and run again") from err
        for old in sorted(out.glob(f"{self.path.stem}-*.sqlite"))[:-keep]:
            old.unlink()
        return dest

    def export(self, out_dir: Path | str) -> list[Path]:
        """``results.csv`` and ``results.parquet`` (plus ``history.csv``, and ``accuracy.csv`` when the store
        holds evaluations) in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        df, hist, acc = self._flat("results"), self._flat("history"), self.accuracy()
        df.to_csv(out / "results.csv", index=False)
        df.to_parquet(out / "results.parquet", index=False)
        hist.to_csv(out / "history.csv", index=False)
        written = [out / "results.csv", out / "results.parquet", out / "history.csv"]
        if len(acc):
            acc.to_csv(out / "accuracy.csv", index=False)
            written.append(out / "accuracy.csv")
        return written


def writable_dir(path: Path) -> None:
    """Create ``path`` if need be and write a probe file there: the ``OSError`` says why it cannot serve."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "not a folder")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write-probe"
    probe.write_bytes(b"")
    probe.unlink()


def result_files(roots: Iterable[Path | str]) -> list[Path]:
    """Every ``result.json`` under ``roots`` (absolute paths, sorted)."""
    return sorted(p.absolute() for root in roots if Path(root).exists() for p in Path(root).rglob("result.json"))


RESULT_KEYS = ("run_id", "config_hash", "status")


def read_row(path: Path, keys: tuple[str, ...] = RESULT_KEYS) -> tuple[dict[str, Any] | None, str]:
    """The row in ``path`` (a result row; an accuracy row with ``keys=ACCURACY_KEYS``), or (None, why it
    is not one)."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, f"not JSON (truncated or damaged: {err.msg} at character {err.pos})"
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not a result row"
    missing = [k for k in keys if not row.get(k)]
    if missing:
        return None, f"not a{'n accuracy' if keys == ACCURACY_KEYS else ' result'} row (no {', '.join(missing)})"
    return row, ""


def rebuild_store(path: Path | str, roots: Iterable[Path | str]) -> tuple[Collected, Path | None]:
    """Recreate the store at ``path`` from every ``result.json`` under ``roots``, oldest first (so the
    rule of which row is current replays as it happened). An existing file is kept beside it as
    ``<name>.replaced-<time>``; returns what was collected and where the old file went."""
    path = Path(path).absolute()
    rows = []
    done = Collected()
    for file in result_files(roots):
        row, reason = read_row(file)
        if row is None:
            done.skipped.append((str(file), reason))
        else:
            rows.append((str(row.get("created_at") or ""), str(file), row))
    tmp = path.with_name(path.name + ".rebuild")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        stale.unlink(missing_ok=True)
    with ResultStore(tmp) as store:
        for _, file, row in sorted(rows, key=lambda r: (r[0], r[1])):
            if store.add(row, file):
                done.added += 1
            else:
                done.seen += 1
        for file in sorted((path.parent / EVALUATIONS).glob("*.json")):  # measured-accuracy rows
            row, reason = read_row(file, ACCURACY_KEYS)
            if row is None:
                done.skipped.append((str(file), reason))
            elif store.add_accuracy(row):
                done.added += 1
    old = None
    if path.exists():
        old = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        path.replace(old)
    for side in ("-wal", "-shm"):
        leftover = Path(f"{path}{side}")
        if leftover.exists() and old is not None:
            leftover.replace(f"{old}{side}")
        leftover.unlink(missing_ok=True)
    tmp.replace(path)
    return done, old
