"""Sweeps end to end: Hydra's sweep syntax, planning, fresh processes, resume, failures."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.plan import SweepError, expand, plan
from bench.store import ResultStore
from bench.sweep import run_sweep
from reports.build import build_report
from tests.conftest import write_tiny_sweep

pytestmark = pytest.mark.slow  # fresh processes and model-sized traces


@pytest.fixture
def tiny_sweep(tmp_path):
    return write_tiny_sweep(tmp_path, "m2f,proscale_111,rt_m2f", measure="flops")



def test_expand_uses_hydras_sweep_syntax():
    jobs = expand(["sweep=x"], {"encoder": "m2f,rt_m2f", "input.batch": "range(1,3)"}, ["precision=fp32"])
    assert len(jobs) == 4 and all("sweep=x" in j and "precision=fp32" in j for j in jobs)
    assert {j[2] for j in jobs} == {"input.batch=1", "input.batch=2"}
    # command-line overrides narrow or replace an axis; they do not multiply it
    assert expand([], {"encoder": "m2f,rt_m2f,proscale"}, ["encoder=m2f"]) == [["encoder=m2f"]]
    assert len(expand([], {"encoder": "m2f,rt_m2f,proscale"}, ["encoder=m2f,lite_m2f"])) == 2
    assert expand(["measure=flops"], {}, ["measure=auto"]) == [["measure=auto"]]


def test_plan_fails_fast_on_bad_overrides(tiny_sweep):
    with pytest.raises(SweepError, match="Available options in 'backbone'"):
        plan(tiny_sweep, ["backbone=vit"])
    with pytest.raises(SweepError, match="valid sweeps: .*default"):
        plan("no_such_sweep", [])


def test_sweep_end_to_end_resume_and_report(tiny_sweep, tmp_path, capsys):
    results = tmp_path / "results"
    # stopped after one job ...
    assert run_sweep(tiny_sweep, [], results, max_jobs=1) == 0
    err = capsys.readouterr().err
    assert "all 1 jobs run were ok" in err and "stopped by --max-jobs with 2 left" in err
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
    assert (by_variant["accuracy"] == "n/a (not published)").all()  # ADE20K R50: no published PQ here
    md = (tmp_path / "report" / "report.md").read_text()
    assert "proscale(1,1,1)+lpe+trc" in md and "No latency or energy was measured" in md
    html = (tmp_path / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html and "rt_m2f(e1)" in html
    assert summary["figures"] and all((tmp_path / "report" / "figures" / f).exists() for f in summary["figures"])
    assert (tmp_path / "report" / "tables" / "main.tex").read_text().count("\\midrule") >= 1


def test_a_job_that_raises_is_failed_and_the_others_complete(tiny_sweep, tmp_path):
    # a FLOP cache that is a file, not a folder: every FLOP count raises at run time
    results = tmp_path / "results"
    results.mkdir()
    (results / "flops_cache").write_text("not a folder")
    failed = run_sweep(tiny_sweep, ["encoder=m2f,rt_m2f"], results)
    assert failed == 2
    (results / "flops_cache").unlink()
    assert run_sweep(tiny_sweep, ["encoder=m2f"], results) == 0
    with ResultStore(results / "results.sqlite") as store:
        statuses = sorted(r["status"] for r in store.rows())
        errors = [r["error"] for r in store.rows("history") if r["status"] == "failed"]
    assert statuses == ["failed", "ok"] and len(errors) == 2  # the ok re-run replaced m2f's failed row
    assert all("FileExistsError" in e for e in errors), errors


def test_invalid_settings_stop_the_sweep_before_any_job_runs(tiny_sweep, tmp_path):
    results = tmp_path / "results"
    with pytest.raises(SweepError, match=r"precision='fp8' is not valid; valid choices: fp32, tf32, bf16") as err:
        run_sweep(tiny_sweep, ["encoder=m2f,rt_m2f", "precision=fp8"], results)
    assert err.value.code == 2 and not (results / "runs").exists()


def test_configurations_that_need_a_gpu_are_skipped_on_cpu_and_the_rest_run(tiny_sweep, tmp_path, capsys):
    results = tmp_path / "results"
    assert run_sweep(tiny_sweep, ["encoder=m2f", "mode=eager,cudagraph", "device=cpu"], results, dry_run=True) == 0
    captured = capsys.readouterr()
    assert "skipping 1 configuration(s) this machine cannot run: mode=cudagraph needs device=cuda" in captured.err
    assert len(captured.out.splitlines()) == 1 and "eager" in captured.out
    with pytest.raises(SweepError, match="none of its 1 configurations can run on this machine"):
        run_sweep(tiny_sweep, ["encoder=m2f", "mode=cudagraph", "device=cpu"], results)


def test_main_is_the_cpu_sweep_without_a_gpu_and_default_with_one(monkeypatch, capsys):
    import torch

    from bench.sweep import resolve_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_main("main") == "cpu" and "no GPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_main("main") == "default"
    assert resolve_main("proscale_grid") == "proscale_grid"


def test_the_cpu_sweep_times_every_encoder_of_the_default_sweep_on_the_cpu():
    cpu, default = plan("cpu", []), plan("default", [])
    assert {j.label.split()[0] for j in cpu} == {j.label.split()[0] for j in default}  # the variants
    assert len(cpu) == 9 and len({j.config_hash for j in cpu}) == 9
    for job in cpu:
        cfg = job.config
        assert cfg["device"] == "cpu" and cfg["measure"] == ["flops", "memory", "latency"]
        assert (cfg["input"]["height"], cfg["input"]["width"]) == (256, 512)
        assert cfg["timing"]["pixel_decoder_alone"] and cfg["timing"]["secondary"] == 1.0
