"""Render the report from its data: ``report.md`` and a self-contained ``index.html`` (a Jinja2 template,
every value escaped, figures embedded)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports.tables import Table

TEMPLATES = Path(__file__).with_name("templates")
INTRO = ("Accuracy values are *reported* (published, see `accuracy source`); every other number is *measured* by "
         "encbench.")
FAILED_COLUMNS = ["status", "variant", "backbone", "dataset", "error"]


@dataclass
class Section:
    """A titled part of the report: figure files (under ``figures/``) and tables."""

    title: str
    figures: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def markdown_table(table: Table) -> str:
    """A pipe table; ``|`` inside a cell is escaped so it cannot shift the columns."""
    shown = table.shown.apply(lambda col: col.map(lambda v: str(v).replace("|", "\\|")))
    md = shown.to_markdown(index=False)
    return f"{table.note}\n\n{md}" if table.note else md


def write_report(out: Path, sections: list[Section], notes: list[str], failed: pd.DataFrame) -> None:
    """Both renderings of the same sections."""
    failed = failed[[c for c in FAILED_COLUMNS if c in failed]] if len(failed) else pd.DataFrame()
    (out / "report.md").write_text(render_markdown(sections, notes, failed))
    (out / "index.html").write_text(render_html(out, sections, notes, failed))


def render_markdown(sections: list[Section], notes: list[str], failed: pd.DataFrame) -> str:
    lines = ["# encbench report", "", INTRO, ""]
    lines += [f"> {n}" for n in notes]
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        lines += [f"![{f}](figures/{f})" for f in s.figures]
        for t in s.tables:
            lines += ["", markdown_table(t)]
    if len(failed):
        lines += ["", "## Jobs that did not succeed", "",
                  markdown_table(Table("failed", failed.astype(object).where(failed.notna(), "–")))]
    return "\n".join(lines) + "\n"


def render_html(out: Path, sections: list[Section], notes: list[str], failed: pd.DataFrame) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))

    def embed(name: str) -> str:
        return "data:image/png;base64," + base64.b64encode((out / "figures" / name).read_bytes()).decode()

    def rows(frame: pd.DataFrame) -> list[list[str]]:
        return [[str(v) for v in r] for r in frame.itertuples(index=False)]

    return env.get_template("report.html.j2").render(
        notes=notes, sections=sections, embed=embed, rows=rows, failed=failed,
        failed_rows=rows(failed.astype(object).where(failed.notna(), "–")) if len(failed) else [])
