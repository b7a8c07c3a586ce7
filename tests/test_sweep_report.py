"""Sweeps end to end (fresh processes, resume, failures), the store, the Pareto front, the report."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from bench.store import ResultStore
from bench.sweep import expand, plan, run_sweep
from reports.build import build_report
from reports.pareto import front_steps, pareto_mask
from reports.tables import load_accuracy

TINY_SWEEP = """
defaults:
  - config
  - _self_
sweep: tiny
measure: flops
backbone: r50
input: ade20k
input.height: 64
input.width: 64
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      encoder: m2f,proscale_111,rt_m2f
"""


@pytest.fixture
def tiny_sweep(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP)
    return str(path)


# ---------------------------------------------------------------- Pareto
def test_pareto_front_on_a_hand_made_set():
    cost = [1.0, 2.0, 3.0, 2.5, 4.0, np.nan, 2.0]
    quality = [50.0, 55.0, 54.0, 58.0, 58.0, 60.0, 55.0]
    # 0: cheapest; 1/6 tie (neither strictly better: both kept); 2 dominated by 1; 3 best at 2.5;
    # 4 dominated by 3 (same quality, costlier); 5 has no cost: never on the front
    assert pareto_mask(cost, quality).tolist() == [True, True, False, True, False, False, True]
    x, y = front_steps(cost, quality)
    assert x.tolist() == [1.0, 2.0, 2.0, 2.5] and y.tolist() == [50.0, 55.0, 55.0, 58.0]


# ---------------------------------------------------------------- store
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


# ---------------------------------------------------------------- sweeps
def test_expand_uses_hydras_sweep_syntax():
    jobs = expand(["sweep=x"], {"encoder": "m2f,rt_m2f", "input.batch": "range(1,3)"}, ["precision=fp32"])
    assert len(jobs) == 4 and all("sweep=x" in j and "precision=fp32" in j for j in jobs)
    assert {j[2] for j in jobs} == {"input.batch=1", "input.batch=2"}
    # command-line overrides narrow or replace an axis; they do not multiply it
    assert expand([], {"encoder": "m2f,rt_m2f,proscale"}, ["encoder=m2f"]) == [["encoder=m2f"]]
    assert len(expand([], {"encoder": "m2f,rt_m2f,proscale"}, ["encoder=m2f,lite_m2f"])) == 2
    assert expand(["measure=flops"], {}, ["measure=auto"]) == [["measure=auto"]]


def test_plan_fails_fast_on_bad_overrides(tiny_sweep):
    from hydra.errors import HydraException

    with pytest.raises(HydraException):
        plan(tiny_sweep, ["backbone=vit"])
    with pytest.raises(SystemExit, match="valid sweeps: .*default"):
        plan("no_such_sweep", [])


def test_sweep_end_to_end_resume_and_report(tiny_sweep, tmp_path):
    results = tmp_path / "results"
    # interrupted after one job (as a crash would leave it) ...
    assert run_sweep(tiny_sweep, [], results, max_jobs=1) == 0
    with ResultStore(results / "results.sqlite") as store:
        assert len(store.rows()) == 1
    # ... and re-run: the two missing configurations run, the first is not repeated
    assert run_sweep(tiny_sweep, [], results) == 0
    with ResultStore(results / "results.sqlite") as store:
        rows = store.rows()
        hist = store.rows("history")
    assert sorted(r["variant"] for r in rows) == ["m2f", "proscale(1,1,1)+lpe+trc", "rt_m2f(e1)"]
    assert len(hist) == 3 and len({r["config_hash"] for r in rows}) == 3
    assert all(r["status"] == "ok" and r["sweep"] == "tiny" and r["gmacs_total"] > 0 for r in rows)
    assert run_sweep(tiny_sweep, [], results) == 0  # nothing left to do
    with ResultStore(results / "results.sqlite") as store:
        assert len(store.rows("history")) == 3
    from bench.sweep import main as sweep_main

    assert sweep_main([tiny_sweep, "encoder=m2f", "force=true", "--results", str(results)]) == 0  # re-measures
    with ResultStore(results / "results.sqlite") as store:
        assert len(store.rows("history")) == 4 and len(store.rows()) == 3
    # the FLOP cache served the shared stages: backbone, decoder and post-processing traced once
    assert len(list((results / "flops_cache").glob("*.json"))) == 3 + 3
    # the report from that store
    with ResultStore(results / "results.sqlite") as store:
        summary = build_report(store.frame(), tmp_path / "report")
    main = pd.read_csv(tmp_path / "report" / "tables" / "main.csv")
    assert sorted(main["variant"]) == ["m2f", "proscale(1,1,1)+lpe+trc", "rt_m2f(e1)"]
    by_variant = main.set_index("variant")
    gmacs = {r["variant"]: r["gmacs_total"] for r in rows}
    assert by_variant.loc["m2f", "G-MACs total"] == pytest.approx(gmacs["m2f"])
    assert (by_variant["PQ (reported)"] == "n/a (not published)").all()  # ADE20K R50: no published PQ here
    md = (tmp_path / "report" / "report.md").read_text()
    assert "proscale(1,1,1)+lpe+trc" in md and "No latency or energy was measured" in md
    html = (tmp_path / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html and "rt_m2f(e1)" in html
    assert summary["figures"] and all((tmp_path / "report" / "figures" / f).exists() for f in summary["figures"])
    assert (tmp_path / "report" / "tables" / "main.tex").read_text().count("\\midrule") >= 1


def test_a_job_that_raises_is_failed_and_the_others_complete(tiny_sweep, tmp_path):
    # timing.max_iters=0 makes the latency job raise ("no timing samples") for every config: use one config
    results = tmp_path / "results"
    failed = run_sweep(tiny_sweep, ["encoder=m2f,rt_m2f", "measure=latency", "timing.max_iters=0",
                                    "timing.warmup_max_seconds=0.01", "timing.stage_iters=1"], results)
    assert failed == 2
    ok = run_sweep(tiny_sweep, ["encoder=m2f"], results)
    assert ok == 0
    # an invalid option (cudagraph needs CUDA) is an invalid row too, and the sweep goes on
    assert run_sweep(tiny_sweep, ["encoder=m2f,rt_m2f", "mode=cudagraph", "device=cpu"], results) == 2
    with ResultStore(results / "results.sqlite") as store:
        statuses = sorted(r["status"] for r in store.rows())
        errors = [r["error"] for r in store.rows() if r["status"] == "failed"]
    assert statuses == ["failed", "failed", "invalid", "invalid", "ok"]
    assert all("no timing samples" in e for e in errors)


# ---------------------------------------------------------------- accuracy join and report content
def fake_rows() -> pd.DataFrame:
    base = {"status": "ok", "device": "cuda", "gpu_name": "H100", "cpu_name": "x", "precision": "fp32",
            "mode": "eager", "batch": 1, "height": 1024, "width": 2048, "dataset": "cityscapes",
            "backbone": "swin_t", "params_total": 47e6, "params_pixel_decoder": 5e6, "gflops_total": 1.0}
    variants = [("m2f", "m2f", 285.0, 39.0), ("proscale(3,3,3)+lpe+trc", "proscale", 137.0, 30.0),
                ("proscale(1,1,1)+lpe+trc", "proscale", 56.0, 20.0), ("proscale(0,0,1)+lpe+trc", "proscale", 40., 15.)]
    rows = []
    for v, enc, macs, lat in variants:
        r = dict(base, variant=v, encoder=enc, gmacs_pixel_decoder=macs, gmacs_total=macs + 200,
                 latency_ms_pixel_decoder_p50=lat, latency_ms_p50=lat + 30, fps=1000 / (lat + 30),
                 energy_j_per_img_net=lat / 5, energy_j_per_img_gross=lat / 4)
        for s in ("backbone", "transformer_decoder", "postprocess"):
            r[f"gmacs_{s}"] = 1.0
            r[f"latency_ms_{s}_p50"] = 1.0
        rows.append(r)
    return pd.DataFrame(rows)


def test_report_joins_reported_accuracy_and_measures_speed_conversion(tmp_path):
    summary = build_report(fake_rows(), tmp_path)
    main = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("variant")
    assert main.loc["m2f", "PQ (reported)"] == "64.0"
    assert main.loc["proscale(0,0,1)+lpe+trc", "PQ (reported)"] == "n/a (not published)"  # shown, not dropped
    paper = pd.read_csv(tmp_path / "tables" / "paper_cityscapes.csv").set_index("variant")
    assert paper.loc["proscale(3,3,3)+lpe+trc", "FPS (reported, GPU n/s)"] == 5.71
    assert paper.loc["proscale(3,3,3)+lpe+trc", "FPS (measured)"] == pytest.approx(1000 / 60)
    conv_file = next((tmp_path / "tables").glob("speed_conversion_*.csv"))
    conv = pd.read_csv(conv_file).set_index("variant")
    mac_red, lat_red = 1 - 137 / 285, 1 - 30 / 39
    assert conv.loc["proscale(3,3,3)+lpe+trc", "speed_conversion"] == pytest.approx(lat_red / mac_red)
    assert "Spearman rho (pixel-decoder G-MACs vs latency): 1.00" in (tmp_path / "report.md").read_text()
    assert any(f.startswith("pareto_fps_") for f in summary["figures"])
    assert any(f.startswith("pareto_energy_") for f in summary["figures"])
    assert any(f.startswith("flops_to_latency_") for f in summary["figures"])
    assert all((tmp_path / "figures" / f.replace(".png", ".svg")).exists() for f in summary["figures"])


def test_user_accuracy_overrides_published(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("dataset,backbone,variant,value\ncityscapes,swin_t,m2f,70.5\n")
    acc = load_accuracy(csv).set_index(["dataset", "backbone", "variant"])
    assert acc.loc[("cityscapes", "swin_t", "m2f"), "value"] == 70.5
    assert acc.loc[("cityscapes", "swin_t", "rt_m2f(e1)"), "value"] == 59.73  # the rest stays
    build_report(fake_rows(), tmp_path / "r", accuracy=csv)
    main = pd.read_csv(tmp_path / "r" / "tables" / "main.csv").set_index("variant")
    assert main.loc["m2f", "PQ (reported)"] == "70.5"
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,variant,value\nx,y,1\n")
    with pytest.raises(ValueError, match="lacks columns \\['backbone'\\]"):
        load_accuracy(bad)


def test_reports_cli_collect_export_build(tmp_path):
    from reports.__main__ import main

    runs = tmp_path / "runs" / "job1"
    runs.mkdir(parents=True)
    r = row("9", "z", variant="m2f", encoder="m2f", device="cpu", cpu_name="cpu", precision="fp32", mode="eager",
            batch=1, height=64, width=64, dataset="ade20k", backbone="r50", gmacs_total=1.0)
    (runs / "result.json").write_text(json.dumps(r))
    res = tmp_path / "results"
    assert main(["collect", f"results={res}", f"runs={tmp_path / 'runs'}"]) == 0
    assert main(["collect", f"results={res}", f"runs={tmp_path / 'runs'}"]) == 0  # idempotent
    with ResultStore(res / "results.sqlite") as store:
        assert len(store.rows("history")) == 1
    assert main(["export", f"results={res}", f"export={tmp_path / 'exp'}"]) == 0
    assert (tmp_path / "exp" / "results.parquet").exists()
    assert main(["build", f"results={res}", f"report.out={tmp_path / 'rep'}"]) == 0
    assert (tmp_path / "rep" / "index.html").exists()
    with pytest.raises(SystemExit, match="valid options"):
        main(["report.acc=x"])


def test_fast_path_section_compares_within_each_execution_configuration(tmp_path):
    ref = fake_rows().assign(msda_backend="pytorch")
    fast = ref.assign(msda_backend="triton", mode="cudagraph", precision="bf16", force_fp32=False,
                      latency_ms_pixel_decoder_p50=np.nan,  # stage hooks cannot time a captured graph
                      latency_ms_pixel_decoder_alone_p50=ref["gmacs_pixel_decoder"] / 30)  # time ∝ MACs
    summary = build_report(pd.concat([ref, fast], ignore_index=True), tmp_path)
    table = pd.read_csv(next((tmp_path / "tables").glob("fast_path_*.csv")))
    ps = table[table["variant"] == "proscale(3,3,3)+lpe+trc"].set_index("backend")
    assert ps.loc["pytorch", "speed conversion"] == pytest.approx((1 - 30 / 39) / (1 - 137 / 285))
    assert ps.loc["triton", "speed conversion"] == pytest.approx(1.0)  # latency proportional to MACs
    assert ps.loc["triton", "mode"] == "cudagraph" and not ps.loc["triton", "pixdec fp32"]
    m2f = table[table["variant"] == "m2f"].set_index("backend")
    assert m2f.loc["triton", "pixdec speed-up vs M2F pytorch eager fp32"] == pytest.approx(39 / (285 / 30))
    assert any(f.startswith("conversion_") for f in summary["figures"])
    # fronts and per-group tables never mix backends
    assert len(list((tmp_path / "tables").glob("speed_conversion_*.csv"))) == 2
    assert "Fast path" in (tmp_path / "report.md").read_text()


def test_report_escapes_user_strings_and_pipes(tmp_path):
    """Accuracy CSV fields reach the report: HTML is escaped by the template, a pipe cannot shift table cells."""
    from reports.render import Section, markdown_table, write_report
    from reports.tables import Table

    shown = pd.DataFrame({"variant": ["<script>alert(1)</script>"], "source": ["paper | table 2"]})
    section = Section("a <b>title</b>", [], [Table("t", shown, note="note & more")])
    write_report(tmp_path, [section], ["<i>note</i>"], pd.DataFrame())
    page = (tmp_path / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt;b&gt;title&lt;/b&gt;" in page and "note &amp; more" in page
    row = [ln for ln in markdown_table(Table("t", shown)).splitlines() if "paper" in ln][0]
    assert row.count(" | ") == 1 and "paper \\| table 2" in row  # two cells, the pipe escaped
