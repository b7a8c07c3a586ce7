"""Render the report from its data: ``report.md`` and a self-contained ``index.html`` (a Jinja2 template,
every value escaped, figures embedded)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

TEMPLATES = Path(__file__).with_name("templates")
INTRO = ("Accuracy values are *reported* (published, see `accuracy source`) unless `accuracy kind` says *measured* "
         "(an evaluation of a checkpoint with `python -m bench.evaluate`, drawn as diamonds); every other number is "
         "*measured* by encbench.")
FAILED_COLUMNS = ["status", "variant", "backbone", "dataset", "error"]


@dataclass
class Table:
    """A table of the report: its file name, the values as shown (NaN as an en dash), and a note above it."""

    name: str
    shown: pd.DataFrame
    note: str = ""


def shown_values(t: pd.DataFrame) -> pd.DataFrame:
    """Values as a reader sees them: NaN as an en dash, floats as plain numbers (:func:`plain`)."""
    shown = t.astype(object).where(t.notna(), "–")
    return shown.apply(lambda col: col.map(lambda v: plain(v) if isinstance(v, float) else v))


def plain(v: float) -> str:
    """3 significant digits without an exponent: 2,360 (not 2.36e+03), 39.3, 0.0012; an exponent only
    below 1e-4."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v == 0 or abs(v) >= 1e-4 else f"{v:.2e}"


@dataclass
class Section:
    """A titled part of the report: figure files (under ``figures/``) and tables."""

    title: str
    figures: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def markdown_table(table: Table) -> str:
    """A pipe table; ``|`` inside a cell is escaped so it cannot shift the columns, and HTML is shown as
    text (a markdown renderer would otherwise run it)."""
    shown = table.shown.apply(lambda col: col.map(lambda v: html.escape(str(v), quote=False).replace("|", "\\|")))
    md = shown.to_markdown(index=False)
    return f"{table.note}\n\n{md}" if table.note else md


def write_report(out: Path, sections: list[Section], notes: list[str], failed: pd.DataFrame) -> None:
    """Both renderings of the same sections; the jobs that did not succeed are the last one."""
    if len(failed):
        failed = failed[[c for c in FAILED_COLUMNS if c in failed]]
        sections = [*sections, Section("Jobs that did not succeed", [], [Table("failed", shown_values(failed))])]
    (out / "report.md").write_text(render_markdown(sections, notes))
    (out / "index.html").write_text(render_html(out, sections, notes))


def render_markdown(sections: list[Section], notes: list[str]) -> str:
    lines = ["# encbench report", "", INTRO, ""]
    lines += [f"> {html.escape(n, quote=False)}" for n in notes]
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        lines += [f"> {html.escape(n, quote=False)}" for n in s.notes] + ([""] if s.notes else [])
        lines += [f"![{f}](figures/{f})" for f in s.figures]
        for t in s.tables:
            lines += ["", markdown_table(t)]
    return "\n".join(lines) + "\n"


def render_html(out: Path, sections: list[Section], notes: list[str]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))

    def embed(name: str) -> str:
        return "data:image/png;base64," + base64.b64encode((out / "figures" / name).read_bytes()).decode()

    def rows(frame: pd.DataFrame) -> list[list[str]]:
        return [[str(v) for v in r] for r in frame.itertuples(index=False)]

    return env.get_template("report.html.j2").render(notes=notes, sections=sections, embed=embed, rows=rows)
