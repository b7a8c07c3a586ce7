"""The report: accuracy joined, speed conversion, the fast-path section, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.store import ResultStore
from reports.build import build_report
from reports.tables import load_accuracy


def row(run_id: str, h: str, status: str = "ok", **kw) -> dict:
    return {"run_id": run_id, "config_hash": h, "status": status, "created_at": run_id, "sweep": "t", **kw}


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


@pytest.mark.slow
def test_report_joins_reported_accuracy_and_measures_speed_conversion(tmp_path):
    summary = build_report(fake_rows(), tmp_path)
    main = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("variant")
    assert main.loc["m2f", "accuracy"] == "64.0"
    assert main.loc["proscale(0,0,1)+lpe+trc", "accuracy"] == "n/a (not published)"  # shown, not dropped
    paper = pd.read_csv(tmp_path / "tables" / "paper_cityscapes.csv").set_index("variant")
    assert paper.loc["proscale(3,3,3)+lpe+trc", "FPS (reported, GPU n/s)"] == 5.71
    assert paper.loc["proscale(3,3,3)+lpe+trc", "FPS (measured)"] == pytest.approx(1000 / 60)
    conv_file = next((tmp_path / "tables").glob("speed_conversion_*.csv"))
    conv = pd.read_csv(conv_file).set_index("variant")
    mac_red, lat_red = 1 - 137 / 285, 1 - 30 / 39
    assert conv.loc["proscale(3,3,3)+lpe+trc", "speed_conversion"] == pytest.approx(lat_red / mac_red)
    # four variants: too few for a rank correlation
    assert "No rank correlation: fewer than 5 variants" in (tmp_path / "report.md").read_text()
    assert "Spearman" not in (tmp_path / "report.md").read_text()
    assert any(f.startswith("pareto_fps_") for f in summary["figures"])
    assert any(f.startswith("pareto_energy_") for f in summary["figures"])
    assert any(f.startswith("flops_to_latency_") for f in summary["figures"])
    assert all((tmp_path / "figures" / f.replace(".png", ".svg")).exists() for f in summary["figures"])


@pytest.mark.slow
def test_user_accuracy_overrides_published(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("dataset,backbone,variant,value\ncityscapes,swin_t,m2f,70.5\n")
    acc = load_accuracy(csv).set_index(["dataset", "backbone", "variant"])
    assert acc.loc[("cityscapes", "swin_t", "m2f"), "value"] == 70.5
    assert acc.loc[("cityscapes", "swin_t", "rt_m2f(e1)"), "value"] == 59.73  # the rest stays
    build_report(fake_rows(), tmp_path / "r", accuracy=csv)
    main = pd.read_csv(tmp_path / "r" / "tables" / "main.csv").set_index("variant")
    assert main.loc["m2f", "accuracy"] == "70.5"
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
    assert main(["report.acc=x"]) == 2


@pytest.mark.slow
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


def test_each_group_names_its_code_and_warns_when_fingerprints_mix():
    from reports.tables import code_note

    one = pd.DataFrame({"code_fingerprint": ["f1", "f1"], "git_commit": ["c1", "c2"], "reference": [None, None]})
    assert code_note(one, "f1") == "Measured by code f1, commit c1, c2."
    assert "(not the current code: stale rows, kept)" in code_note(one, "f2")
    mixed = one.assign(code_fingerprint=["f1", "f2"])
    assert code_note(mixed, "f1").startswith("Warning: this group mixes rows measured by 2 code versions (fingerprints "
                                             "f1, f2")


def test_the_report_leads_with_the_speed_conversion_finding(tmp_path):
    rows = fake_rows()
    rows["latency_ms_pixel_decoder_alone_p50"] = rows["latency_ms_pixel_decoder_p50"]
    rows["latency_ms_pixel_decoder_alone_ci95"] = [0.4, 0.3, 0.2, 20.0]  # the last: too noisy to rank
    build_report(rows, tmp_path)
    md = (tmp_path / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0] == "## How much of the MAC saving became speed on H100"
    assert headings[-1].startswith("## All measurements")  # the full table comes last
    first = md.split(headings[0])[1].split("\n## ")[0]
    assert ("On H100 (cityscapes, swin_t, 1024x2048, batch 1, fp32 eager), proscale(3,3,3)+lpe+trc cuts "
            "pixel-decoder MACs by 52 % and its latency by 23 % (95 % CI") in first
    assert "proscale(0,0,1)+lpe+trc cuts" in first
    noisy = next(line for line in first.splitlines() if "proscale(0,0,1)+lpe+trc cuts" in line)
    assert "cannot be told from M2F's, so no speed conversion is given" in noisy
    assert "a speed conversion of" not in noisy
    conv = pd.read_csv(next((tmp_path / "tables").glob("speed_conversion_*.csv"))).set_index("variant")
    assert pd.isna(conv.loc["proscale(0,0,1)+lpe+trc", "speed_conversion"])  # no point value across zero
    assert conv.loc["m2f", ["latency_reduction_low", "latency_reduction_high"]].isna().all()  # none vs itself
    assert conv.loc["proscale(3,3,3)+lpe+trc", "speed_conversion"] > 0
    assert "![flops_to_latency_" in first
    main = md.split(headings[-1])[1]
    assert "GPU busy" not in main and "accuracy source" not in main  # empty and wide columns stay in the CSV
    assert "accuracy source" in (tmp_path / "tables" / "main.csv").read_text()


def test_rank_correlation_needs_five_points_and_numbers_are_plain(tmp_path):
    from reports.render import plain

    assert [plain(v) for v in (2360.4, 5421504.0, 39.31, 0.00123, 0.0, -1234.5, 3e-6)] == [
        "2,360", "5,421,504", "39.3", "0.00123", "0", "-1,234", "3.00e-06"]
    rows = pd.concat([fake_rows(), fake_rows().iloc[[1]].assign(variant="proscale(2,2,2)+lpe+trc",
                                                                 gmacs_pixel_decoder=100.0,
                                                                 latency_ms_pixel_decoder_p50=2360.0)])
    build_report(rows, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Spearman rho (pixel-decoder G-MACs vs latency):" in md  # five variants
    assert "2,360" in md and "e+03" not in md


def test_without_latency_the_headline_says_so_with_the_mac_savings(tmp_path):
    rows = fake_rows().drop(columns=["latency_ms_pixel_decoder_p50", "latency_ms_p50", "fps"])
    build_report(rows, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "no latency was measured: pixel-decoder MACs fall proscale(3,3,3)+lpe+trc by 52 %" in md


def test_variants_whose_intervals_overlap_are_named_as_unrankable():
    from reports.tables import overlapping

    g = pd.DataFrame({"variant": ["a", "b", "c", "d", "e"], "pd_latency_ms": [10.0, 10.5, 11.2, 20.0, 30.0],
                      "pd_latency_ci95": [0.3, 0.3, 0.5, 1.0, float("nan")]})
    # a [9.7, 10.3] meets b [10.2, 10.8], which meets c [10.7, 11.7]: one chain; d stands alone; e has no interval
    assert overlapping(g) == [["a", "b", "c"]]
    assert overlapping(g.assign(pd_latency_ci95=0.01)) == []


def evaluation(precision: str, pq: float, images: int = 500, **kw) -> dict:
    """An accuracy row as python -m bench.evaluate stores it."""
    return {"run_id": f"{precision}-{images}-{pq}", "key": f"abc|cityscapes|val|{images}|cuda|{precision}",
            "created_at": "2026-11-27T00:00:00", "dataset": "cityscapes", "data": "cityscapes", "split": "val",
            "images": images, "backbone": "swin_t", "variant": "m2f", "checkpoint": "/w/m2f.pkl",
            "checkpoint_sha256": "abcdef0123456789", "device": "cuda", "precision": precision,
            "msda_backend": "pytorch", "force_fp32": True, "PQ": pq, "mIoU": 80.0, **kw}


@pytest.mark.slow
def test_a_measured_accuracy_is_preferred_marked_and_its_precision_cost_tabled(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        for r in (evaluation("fp32", 62.0, images=20), evaluation("fp32", 63.1), evaluation("bf16", 62.7)):
            assert store.add_accuracy(r)
        assert not store.add_accuracy(evaluation("bf16", 62.7))  # the same evaluation is stored once
        measured = store.accuracy()
    assert len(measured) == 3
    summary = build_report(fake_rows(), tmp_path / "r", measured=measured)
    main = pd.read_csv(tmp_path / "r" / "tables" / "main.csv").set_index("variant")
    assert main.loc["m2f", "accuracy"] == "63.1" and main.loc["m2f", "accuracy kind"] == "measured"
    assert "500 images" in main.loc["m2f", "accuracy source"]  # the whole split, fp32, before the subset
    assert main.loc["proscale(3,3,3)+lpe+trc", "accuracy kind"] == "reported"
    table = pd.read_csv(tmp_path / "r" / "tables" / "measured_accuracy.csv")
    bf16 = table[table["precision"] == "bf16"].iloc[0]
    assert bf16["Δ headline vs fp32"] == pytest.approx(62.7 - 63.1)
    assert "measured_accuracy" in summary["tables"]
    assert "drawn as diamonds" in (tmp_path / "r" / "report.md").read_text()


def test_an_accuracy_line_that_matches_no_measured_variant_is_named(tmp_path, capsys):
    csv = tmp_path / "mine.csv"
    csv.write_text('dataset,backbone,variant,value\ncityscapes,swin_t,"proscale(3,3,3)+lpe",61.0\n')  # no +trc
    build_report(fake_rows(), tmp_path / "report", csv)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "cityscapes / swin_t / proscale(3,3,3)+lpe matches no measured row" in md
    assert "proscale(3,3,3)+lpe+trc" in md.split("matches no measured row")[1].splitlines()[0]  # the near names
    assert "matches no measured row" in capsys.readouterr().err


def test_the_headline_says_when_other_processes_used_the_cpu(tmp_path):
    rows = fake_rows().assign(cpu_others_cores=[0.0, 1.02, 0.05, float("nan")])
    build_report(rows, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "other processes used the CPU while these were timed (proscale(3,3,3)+lpe+trc: 1.0 cores)" in md
    quiet = fake_rows().assign(cpu_others_cores=0.01)
    build_report(quiet, tmp_path / "quiet")
    assert "other processes used the CPU" not in (tmp_path / "quiet" / "report.md").read_text()
