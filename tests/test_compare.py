"""``python -m reports compare``: verdicts from the rows' intervals, pairing, and the regression gate."""

from __future__ import annotations

import math

import pytest

from bench.store import ResultStore
from reports.__main__ import REPO
from reports.__main__ import main as reports_main
from reports.compare import compare, pairing_columns, ratio_interval, verdict

BASE = {"status": "ok", "encoder": "m2f", "backbone": "swin_t", "dataset": "cityscapes", "height": 1024,
        "width": 2048, "batch": 1, "precision": "fp32", "mode": "eager", "msda_backend": "pytorch",
        "force_fp32": True, "device": "cuda", "gpu_name": "H100"}


def row(run_id: str, variant: str, lat: float, ci: float, **kw) -> dict:
    return {**BASE, "run_id": run_id, "config_hash": f"{variant}-{kw.get('precision', 'fp32')}-{kw.get('gpu_name')}",
            "created_at": run_id, "variant": variant, "latency_ms_p50": lat, "latency_ms_ci95": ci, **kw}


def test_the_ratio_interval_combines_both_intervals_in_log_space():
    ratio, low, high = ratio_interval(100.0, 2.0, 80.0, 1.6)  # 2 % on each side
    assert ratio == 0.8
    assert math.log(high / ratio) == pytest.approx(math.hypot(0.02, 0.02), rel=1e-3)
    assert low < 0.8 < high and math.isnan(ratio_interval(100.0, math.nan, 80.0, 1.0)[1])


@pytest.mark.parametrize("b,ci,expected", [(80.0, 1.0, "FASTER"), (130.0, 1.0, "SLOWER"), (100.5, 0.3, "SAME"),
                                           (101.0, 8.0, "UNCLEAR"), (97.0, 0.2, "FASTER")])
def test_verdicts(b, ci, expected):
    _, low, high = ratio_interval(100.0, 0.5, b, ci)
    assert verdict(low, high, 0.02) == expected


def test_rows_pair_on_what_neither_side_selects(tmp_path):
    import pandas as pd

    rows = pd.DataFrame([row("1", "m2f", 40.0, 0.2), row("2", "ps333", 30.0, 0.2, encoder="proscale"),
                         row("3", "m2f", 20.0, 0.1, precision="bf16"),
                         row("4", "ps333", 19.9, 0.1, encoder="proscale", precision="bf16")])
    on = pairing_columns({"variant": "m2f"}, {"variant": "ps333"})
    assert "encoder" not in on and "precision" in on
    table = compare(rows[rows.variant == "m2f"], rows[rows.variant == "ps333"], on)
    got = dict(zip(table["precision"], table["verdict"], strict=True))
    assert got == {"fp32": "FASTER", "bf16": "SAME"}


def test_the_command_and_its_regression_gate(tmp_path, capsys):
    results = tmp_path / "results"
    with ResultStore(results / "results.sqlite") as store:
        store.add(row("1", "m2f", 40.0, 0.2, gpu_name="H100"))
        store.add(row("2", "m2f", 46.0, 0.2, gpu_name="H200"))
    args = ["compare", f"results={results}", "a.gpu_name=H100", "b.gpu_name=H200"]
    assert reports_main(args) == 0
    out = capsys.readouterr().out
    assert "SLOWER" in out and "1 SLOWER" in out
    assert reports_main([*args, "fail_above=10"]) == 1  # 15 % slower: beyond the gate
    assert reports_main([*args, "fail_above=20"]) == 0
    assert reports_main([*args, f"out={tmp_path / 'c.csv'}"]) == 0 and (tmp_path / "c.csv").exists()


def test_a_shipped_reference_folder_is_a_side(capsys):
    folder = REPO / "reference" / "cpu-amd-epyc-2core"
    args = ["compare", f"a.results={folder}", f"b.results={folder}", "a.device=cpu", "b.device=cpu"]
    assert reports_main(args) == 0
    out = capsys.readouterr().out
    assert " 0 FASTER, 0 SLOWER" in out and "m2f" in out  # its rows, paired with themselves


@pytest.mark.parametrize("args,message", [
    (["a.variant=nope"], "a.variant='nope' matches no measured row; present: ['m2f']"),
    (["a.colour=red"], "a.colour: no such column"),
    (["variant=m2f"], "unknown argument 'variant'"),
    (["a.variant=m2f", "b.variant=m2f", "same_within=x"], "are percentages"),
])
def test_bad_compare_input(tmp_path, capsys, args, message):
    results = tmp_path / "results"
    with ResultStore(results / "results.sqlite") as store:
        store.add(row("1", "m2f", 40.0, 0.2))
    assert reports_main(["compare", f"results={results}", *args]) == 2
    assert message in capsys.readouterr().err
