"""The measurement job: the row schema, failures as rows, the CLI, profiling on CPU."""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import settings as job_mod
from bench.config import compose
from bench.job import run_job
from bench.measures import flops as flops_measure
from bench.row import COLUMNS, STAGES, TIMED_STAGES, config_hash
from bench.settings import parse_measures
from models.encoders import variant_name

REPO = Path(__file__).resolve().parents[1]
TINY = ["backbone=r50", "input=ade20k", "input.height=64", "input.width=96"]
FAST_TIMING = ["timing.min_iters=3", "timing.min_seconds=0.01", "timing.warmup_min_seconds=0.0",
               "timing.warmup_max_seconds=0.05", "timing.stage_iters=2", "timing.bootstrap=50"]


@pytest.mark.slow
def test_row_has_every_column_and_matches_result_json(tmp_path):
    cfg = compose([*TINY, "measure=all", *FAST_TIMING])
    row = run_job(cfg, tmp_path)
    assert row["status"] == "ok", row["error"]
    assert list(row) == COLUMNS
    saved = json.loads((tmp_path / "result.json").read_text())
    assert list(saved) == COLUMNS
    assert saved["config_hash"] == row["config_hash"] and saved["run_id"] == row["run_id"]
    # measured on CPU: FLOPs, latency, memory; energy NaN with a reason, never 0
    assert row["gmacs_total"] > 0 and row["latency_ms_p50"] > 0 and row["mem_peak_reserved_mb"] > 0
    for s in TIMED_STAGES:
        assert row[f"latency_ms_{s}_p50"] > 0
    assert math.isnan(row["energy_j_per_img_gross"]) and saved["energy_j_per_img_gross"] is None
    assert "energy not measured" in row["invalid_reason"]
    assert row["variant"] == "m2f" and row["device"] == "cpu" and row["dataset"] == "ade20k"
    assert row["params_total"] == sum(row[f"params_{s}"] for s in ("backbone", "pixel_decoder",
                                                                    "transformer_decoder"))


def test_every_column_is_documented_in_the_schema_page():
    page = (REPO / "docs" / "results.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_<>]+)`", page))
    expanded = set()
    for name in documented:
        if "<stage>" in name:
            expanded |= {name.replace("<stage>", s) for s in STAGES}
        else:
            expanded.add(name)
    missing = [c for c in COLUMNS if c not in expanded]
    assert not missing, f"docs/results.md does not document {missing}"
    from bench.row import SCHEMA_VERSION

    assert f"Schema version {SCHEMA_VERSION} " in page
    assert f"| `schema_version` | version of this schema ({SCHEMA_VERSION}) |" in page


def test_config_hash_identifies_the_measured_configuration():
    a = job_mod.measured_config(compose(TINY), torch.device("cpu"))
    b = job_mod.measured_config(compose([*TINY, "sweep=other", "seed=3"]), torch.device("cpu"))
    c = job_mod.measured_config(compose([*TINY, "encoder=proscale"]), torch.device("cpu"))
    d = job_mod.measured_config(compose([*TINY, "flops.cache_dir=/elsewhere"]), torch.device("cpu"))
    assert config_hash(a) == config_hash(b) == config_hash(d) != config_hash(c)


def test_variant_names():
    assert variant_name({"name": "proscale", "layers": [3, 3, 3], "lpe": True, "trc": "faithful"}) == \
        "proscale(3,3,3)+lpe+trc"
    assert variant_name({"name": "proscale", "layers": [1, 1, 1], "lpe": False, "trc": "off"}) == "proscale(1,1,1)"
    assert variant_name({"name": "lite_m2f"}) == "lite_m2f(h2,3x2)"
    assert variant_name({"name": "rt_m2f", "expansion": 0.5}) == "rt_m2f(e0.5)"


def test_measure_parsing():
    assert parse_measures("all") == ["flops", "latency", "memory", "energy", "error"]
    assert parse_measures("auto", torch.device("cpu")) == ["flops", "memory", "error"]
    assert parse_measures(["flops", "memory"]) == ["flops", "memory"]
    assert parse_measures("flops,profile") == ["flops", "profile"]
    valid = "valid choices: memory, flops, error, latency, roofline, energy, profile, all"
    with pytest.raises(job_mod.InvalidConfig, match=valid):
        parse_measures("speed")


@pytest.mark.parametrize("override,message", [
    ("precision=fp8", "precision='fp8' is not valid; valid choices: fp32, tf32, bf16"),
    ("mode=jit", "mode='jit' is not valid; valid choices: eager, compile, cudagraph"),
    ("device=tpu", "device='tpu' is not valid; valid choices: auto, cpu, cuda"),
    ("mode=cudagraph", "mode=cudagraph needs device=cuda"),
    ("encoder.num_layers=0", "encoder.num_layers=0 must be >= 1"),
    ("+timing.min_iter=3", "unknown timing option"),
])
def test_invalid_settings_become_invalid_rows(override, message, tmp_path):
    cfg = compose([*TINY, "device=cpu", override])
    row = run_job(cfg, tmp_path)
    assert row["status"] == "invalid" and message in row["error"]
    assert row["backbone"] == "r50" and row["encoder"] == "m2f"  # the row still says what was asked
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "invalid"


@pytest.mark.slow
def test_a_crash_is_a_failed_row_and_oom_an_oom_row(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(flops_measure, "count_flops", boom)
    row = run_job(compose(TINY), tmp_path / "a")
    assert row["status"] == "failed" and row["error"] == "RuntimeError: kernel exploded" and row["valid"] is False

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(flops_measure, "count_flops", oom)
    row = run_job(compose(TINY), tmp_path / "b")
    assert row["status"] == "oom" and "80.00 GiB" in row["error"]
    assert json.loads((tmp_path / "b" / "result.json").read_text())["status"] == "oom"


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *overrides, f"hydra.run.dir={cwd}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_prints_the_row_last_and_exits_by_status(tmp_path):
    ok = run_cli(*TINY, "measure=flops", cwd=tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    row = json.loads(ok.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok" and row["gmacs_total"] > 0
    assert json.loads((tmp_path / "ok" / "result.json").read_text())["run_id"] == row["run_id"]
    bad = run_cli(*TINY, "measure=speed", cwd=tmp_path / "bad")
    assert bad.returncode == 2
    assert "valid choices" in json.loads(bad.stdout.strip().splitlines()[-1])["error"]
    unknown = run_cli("backbone=vit", cwd=tmp_path / "unknown")
    assert unknown.returncode != 0 and "swin_t" in unknown.stderr  # Hydra lists the available options


@pytest.mark.slow
def test_profile_on_cpu_writes_trace_and_layer_table(tmp_path):
    cfg = compose(["backbone=r50", "encoder=proscale_111_nolpe", "input=ade20k", "input.height=64",
                   "input.width=64", "measure=profile", "profile.warmup=1", "profile.active=1"])
    row = run_job(cfg, tmp_path)
    assert row["status"] == "ok", row["error"]
    art = row["artifacts"]
    table = pd.read_csv(art["layers_csv"])
    names = list(table["range"])
    assert [n for n in names if n.startswith("pixel_decoder.layer")] == [f"pixel_decoder.layer{i:02d}" for i in
                                                                         range(3)]
    assert "transformer_decoder.layer8.ffn" in names and "postprocess" in names
    top = table[table["range"].isin(["backbone", "pixel_decoder", "transformer_decoder", "postprocess"])]
    assert top["share"].sum() == pytest.approx(1.0)
    layers = table.set_index("range").loc[[f"pixel_decoder.layer{i:02d}" for i in range(3)], "gmacs"]
    assert layers.iloc[0] < layers.iloc[1] < layers.iloc[2]  # P1 < P2 < P3: more tokens each phase
    assert (table["cpu_time_ms"] > 0).all()
    with gzip.open(art["trace"]) as fh:
        trace = json.loads(fh.read())
    assert "pixel_decoder.layer00" in {e.get("name") for e in trace["traceEvents"]}
    assert any(Path(art["tensorboard"]).iterdir())
    assert "| range" in Path(art["layers_md"]).read_text()
    ops = pd.read_csv(art["operators_csv"])  # where the time goes, by operator: grid sampling among them
    assert "aten::grid_sampler_2d" in set(ops["operator"]) and ops["share"].sum() == pytest.approx(1.0)
    assert (ops["cpu_self_ms"].diff().dropna() <= 0).all() and "pixel_decoder" not in set(ops["operator"])
    assert "| operator" in Path(art["operators_md"]).read_text()
    # roofline columns: bytes grow with the phase's tokens; the floor never exceeds the measured time by much
    roof = table.set_index("range").loc[[f"pixel_decoder.layer{i:02d}" for i in range(3)]]
    assert (roof["mbytes_min"].diff().dropna() > 0).all() and set(table["bound"]) <= {"compute", "memory"}
    assert (table["floor_ms"] > 0).all() and (table["roofline_frac"].dropna() > 0).all()


def test_a_single_job_summary_reads_like_a_tool(tmp_path):
    from bench.__main__ import summary

    row = {"status": "ok", "variant": "proscale(1,1,1)+lpe+trc", "backbone": "r50", "dataset": "cityscapes",
           "height": 256, "width": 512, "batch": 1, "precision": "fp32", "mode": "eager", "device": "cpu",
           "params_total": 44_210_000, "params_pixel_decoder": 2_561_345, "gmacs_total": 70.1,
           "gmacs_backbone": 21.4, "gmacs_pixel_decoder": 11.0, "gmacs_transformer_decoder": 10.2,
           "gmacs_postprocess": 0.7, "gflops_total": float("nan"), "latency_ms_p50": 812.3,
           "latency_ms_ci95": 12.04, "latency_ms_pixel_decoder_alone_p50": 259.0,
           "latency_ms_pixel_decoder_alone_ci95": 6.0, "mem_peak_alloc_mb": 512.4}
    (tmp_path / "result.json").write_text("{}")
    text = summary(row, tmp_path / "result.json")
    assert text.splitlines()[0] == "encbench: proscale(1,1,1)+lpe+trc r50 cityscapes 256x512 b1 fp32 eager cpu: ok"
    assert "params       44.21 M (pixel decoder 2.56 M)" in text
    assert "G-MACs       total 70.10  (backbone 21.40  pixel decoder 11.00  decoder 10.20  post 0.70)" in text
    assert "G-FLOPs" not in text and "energy" not in text  # not measured: not shown
    assert "latency      812.3 ms p50 (95 % CI +-12.0 ms)" in text and "pixdec alone 259.0 ms" in text
    assert f"row          {tmp_path / 'result.json'} (make collect adds it" in text
    profiled = summary({**row, "artifacts": {"layers_md": "p/layers.md", "operators_md": "p/operators.md"}},
                       tmp_path / "result.json")
    assert "  layers       p/layers.md\n  operators    p/operators.md" in profiled  # where make profile wrote


def test_a_single_job_on_a_cpu_picks_the_short_timing_unless_told(monkeypatch, capsys):
    from bench import __main__ as cli

    monkeypatch.setattr(cli, "_cuda", lambda: False)
    assert cli.cpu_timing(["measure=latency"]) == ["timing=cpu", "measure=latency"]
    assert "timing=cpu (short timing" in capsys.readouterr().err
    assert cli.cpu_timing(["timing=default", "measure=latency"]) == ["timing=default", "measure=latency"]
    assert cli.cpu_timing(["device=cuda"]) == ["device=cuda"]
    monkeypatch.setattr(cli, "_cuda", lambda: True)
    assert cli.cpu_timing(["measure=latency"]) == ["measure=latency"]  # auto on a GPU machine: the GPU loop
    assert cli.cpu_timing(["device=cpu"]) == ["timing=cpu", "device=cpu"]


@pytest.mark.slow
def test_help_says_which_command_reads_the_data_group():
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("python -m bench: measure one configuration")
    assert "The data group belongs to python -m bench.evaluate" in done.stdout
