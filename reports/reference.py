"""Shipped reference results: measured rows in ``reference/<name>/``, one folder per hardware.

Each folder holds ``rows.csv`` (the store's measured rows, as ``export`` writes them) and
``README.md`` (hardware, driver, library versions, commit(s), dates and the command that produced
them). The report shows them as their own hardware group, labelled "shipped reference", beside
the user's rows and never on one front with them; ``reports compare a.results=reference/<name>``
compares a run with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
LABEL = "shipped reference"
SUMMARY_COLUMNS = ["gpu_name", "driver", "cuda_version", "cpu_name", "num_threads", "torch_version",
                   "transformers_version", "git_commit", "code_fingerprint"]


def load_reference(root: Path = REFERENCE) -> pd.DataFrame:
    """Every ``<root>/*/rows.csv``, with a ``reference`` column naming its folder (empty when none)."""
    frames = [pd.read_csv(p).assign(reference=p.parent.name) for p in sorted(root.glob("*/rows.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def label_hardware(df: pd.DataFrame) -> pd.DataFrame:
    """Reference rows get their own hardware label, so no group, front or figure mixes them with yours."""
    if "reference" in df:
        ref = df["reference"].notna()
        df.loc[ref, "hardware"] = df.loc[ref, "hardware"].astype(str) + f" ({LABEL}: " \
            + df.loc[ref, "reference"].astype(str) + ")"
    return df


def write_reference(rows: pd.DataFrame, name: str, root: Path = REFERENCE, command: str = "") -> Path:
    """``<root>/<name>/rows.csv`` and ``README.md`` from the measured rows of a store."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"reference name {name!r}: use letters, digits, '.', '_' and '-'")
    ok = rows[rows["status"] == "ok"].copy()
    if ok.empty:
        raise ValueError("the store has no measured rows to ship as a reference")
    for col in ("unsupported_ops", "artifacts"):
        if col in ok:
            ok[col] = ok[col].map(json.dumps)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    ok.to_csv(folder / "rows.csv", index=False)
    (folder / "README.md").write_text(summary(ok, name, command))
    return folder


def summary(rows: pd.DataFrame, name: str, command: str) -> str:
    """What the rows were measured on and with, as a short markdown page."""
    sweeps = ", ".join(sorted(rows["sweep"].dropna().astype(str).unique())) or "no sweep"
    lines = [f"# Reference results: {name}", "",
             f"{len(rows)} measured rows ({sweeps}), measured from {rows['created_at'].min()} to "
             f"{rows['created_at'].max()}.", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += ["| field | value(s) |", "|---|---|"]
    for col in SUMMARY_COLUMNS:
        if col in rows:
            values = sorted(rows[col].dropna().astype(str).unique())
            lines.append(f"| `{col}` | {', '.join(values) if values else '–'} |")
    measures = sorted({m for v in rows.get("measure", pd.Series(dtype=str)).dropna() for m in str(v).split(",")})
    lines += [f"| measures | {', '.join(measures)} |", ""]
    return "\n".join(lines)
