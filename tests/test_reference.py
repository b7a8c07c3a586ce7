"""Shipped reference results: written from a store, shown as their own hardware group, compared against."""

from __future__ import annotations

import pandas as pd

from bench.fingerprint import code_fingerprint
from bench.store import ResultStore
from reports.__main__ import main as reports_main
from reports.reference import LABEL, load_reference
from tests.test_reports_build import fake_rows


def user_store(tmp_path, gpu_name: str = "H100") -> tuple:
    results = tmp_path / "results"
    with ResultStore(results / "results.sqlite") as store:
        for i, r in enumerate(fake_rows().assign(gpu_name=gpu_name).to_dict("records")):
            store.add({**r, "run_id": f"{gpu_name}{i}", "config_hash": f"{gpu_name}{i}",
                       "created_at": f"2026-11-0{i + 1}", "sweep": "default", "latency_ms_ci95": 0.2,
                       "git_commit": "abc", "driver": "570.1", "code_fingerprint": code_fingerprint()})
    return results


def test_a_store_ships_as_a_reference_folder_with_its_summary(tmp_path, capsys):
    results = user_store(tmp_path)
    ref = tmp_path / "reference"
    assert reports_main(["reference", f"results={results}", "reference.name=h100-test", f"reference.dir={ref}"]) == 0
    rows = pd.read_csv(ref / "h100-test" / "rows.csv")
    assert len(rows) == 4 and set(rows["gpu_name"]) == {"H100"}
    readme = (ref / "h100-test" / "README.md").read_text()
    assert "4 measured rows (default)" in readme and "| `gpu_name` | H100 |" in readme
    assert "| `driver` | 570.1 |" in readme
    assert reports_main(["reference", f"results={results}", "reference.name=../x", f"reference.dir={ref}"]) == 2
    assert reports_main(["reference", f"results={results}", f"reference.dir={ref}"]) == 2
    assert "reference needs reference.name=NAME" in capsys.readouterr().err


def test_the_report_shows_reference_rows_as_their_own_group_never_on_your_fronts(tmp_path):
    results = user_store(tmp_path)
    ref = tmp_path / "reference"
    assert reports_main(["reference", f"results={results}", "reference.name=h100-test", f"reference.dir={ref}"]) == 0
    assert len(load_reference(ref)) == 4
    out = tmp_path / "rep"
    assert reports_main(["build", f"results={results}", f"reference.dir={ref}", f"report.out={out}"]) == 0
    md = (out / "report.md").read_text()
    assert f"4 rows are {LABEL} results (h100-test" in md
    sections = [line for line in md.splitlines() if line.startswith("## ") and "cityscapes" in line]
    assert any(f"H100 ({LABEL}: h100-test)" in s for s in sections) and any(s.endswith("/ H100") for s in sections)
    main = pd.read_csv(out / "tables" / "main.csv")
    assert sorted(main["hardware"].unique()) == ["H100", f"H100 ({LABEL}: h100-test)"]
    figures = sorted(p.name for p in (out / "figures").glob("pareto_gmacs_pixdec_*.png"))
    assert len(figures) == 2  # one front per hardware group, in files of their own
    assert "(stale)" not in md  # shipped rows were measured by their own code: not stale
    out2 = tmp_path / "rep2"
    assert reports_main(["build", f"results={results}", f"reference.dir={ref}", "report.reference=false",
                         f"report.out={out2}"]) == 0
    assert LABEL not in (out2 / "report.md").read_text()


def test_a_run_compares_against_the_reference(tmp_path, capsys):
    ref = tmp_path / "reference"
    assert reports_main(["reference", f"results={user_store(tmp_path / 'a')}", "reference.name=h100",
                         f"reference.dir={ref}"]) == 0
    mine = user_store(tmp_path / "b", gpu_name="H100")
    assert reports_main(["compare", f"a.results={ref / 'h100' / 'rows.csv'}", f"results={mine}",
                         "a.gpu_name=H100", "b.gpu_name=H100"]) == 0
    assert "4 SAME" in capsys.readouterr().out


def test_reference_rows_beside_a_store_whose_rows_lack_their_columns(tmp_path):
    """A memory-only store (no FLOP or latency columns) beside the shipped rows: the columns the store
    lacks must not turn the reference's numbers into objects (a stacked figure once failed on that)."""
    results = tmp_path / "results"
    with ResultStore(results / "results.sqlite") as store:
        row = fake_rows().iloc[0].to_dict()
        keep = {k: None if k.startswith(("gmacs_", "gflops_", "latency_", "fps")) else v for k, v in row.items()}
        store.add({**keep, "run_id": "m1", "config_hash": "m1", "created_at": "2026-11-01", "sweep": "tiny",
                   "code_fingerprint": code_fingerprint()})
    ref = tmp_path / "reference"
    assert reports_main(["reference", f"results={user_store(tmp_path / 'gpu')}", "reference.name=h100-test",
                         f"reference.dir={ref}"]) == 0
    out = tmp_path / "rep"
    assert reports_main(["build", f"results={results}", f"reference.dir={ref}", f"report.out={out}"]) == 0
    assert any((out / "figures").glob("stages_gmacs_*h100-test*.png"))
