"""Rendering the report: escaping in HTML and markdown."""

from __future__ import annotations

import pandas as pd


def test_report_escapes_user_strings_and_pipes(tmp_path):
    """Accuracy CSV fields reach the report: HTML is escaped by the template, a pipe cannot shift table cells."""
    from reports.render import Section, Table, markdown_table, write_report

    shown = pd.DataFrame({"variant": ["<script>alert(1)</script>"], "source": ["paper | table 2"]})
    section = Section("a <b>title</b>", [], [Table("t", shown, note="note & more")])
    failed = pd.DataFrame([{"status": "failed", "variant": "m2f", "backbone": "r50", "dataset": "coco",
                            "error": "RuntimeError: <b>boom</b>", "run_id": "x"}])
    write_report(tmp_path, [section], ["<i>note</i>"], failed)
    page = (tmp_path / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt;b&gt;title&lt;/b&gt;" in page and "note &amp; more" in page
    assert "<h2>Jobs that did not succeed</h2>" in page and "RuntimeError: &lt;b&gt;boom&lt;/b&gt;" in page
    md = (tmp_path / "report.md").read_text()
    assert "## Jobs that did not succeed" in md and "run_id" not in md  # only the listed columns
    row = [ln for ln in markdown_table(Table("t", shown)).splitlines() if "paper" in ln][0]
    assert row.count(" | ") == 1 and "paper \\| table 2" in row  # two cells, the pipe escaped
