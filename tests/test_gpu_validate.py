"""The one-command GPU validation, rehearsed on CPU: tiny shapes, the triton core in Triton's interpreter,
real jobs in fresh processes into a store, resume, and the deadline."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch

from models.ops import msda_triton
from scripts import gpu_validate

pytestmark = pytest.mark.slow
interpreter = pytest.mark.skipif(not msda_triton.available(torch.device("cpu")),
                                 reason="needs TRITON_INTERPRET=1 on CPU")


@interpreter
def test_rehearsal_of_the_checks_and_tables(tmp_path):
    summary = gpu_validate.main(["--smoke", "--out", str(tmp_path), "--steps", "environment", "correctness",
                                 "transformers", "core_table"])
    assert {k: s["status"] for k, s in summary["steps"].items()} == dict.fromkeys(
        ("environment", "correctness", "transformers", "core_table"), "ok")
    check = summary["correctness"]
    assert check["failed_checks"] == [] and all(check[f"core_L{n}_fp32_ok"] for n in (1, 2, 3, 4))
    assert all(check[f"core_L{n}_bf16_rel_err"] < 1e-2 for n in (1, 2, 3, 4))  # against the same rounded value
    assert check["cudagraph_equals_eager"] is True and check["cudagraph_check"]["mode"] == "eager"  # CPU stand-in
    assert check["m2f_backends_same_precision"] and check["flops_cpu_vs_device"] is True
    assert check["m2f_backends_max_abs_diff"] < 1e-4
    assert summary["ratios"]["m2f_vs_transformers_latency"] > 0
    assert {"encbench", "transformers"} <= set(summary["transformers"])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["steps"] == summary["steps"] and (tmp_path / "core.csv").read_text().count("\n") == 5
    assert "32x4" in (tmp_path / "core.csv").read_text()  # the fixed kernel configuration of a validation run


@interpreter
def test_rehearsal_of_the_jobs_resumes_and_keeps_the_deadline(tmp_path):
    out = ["--smoke", "--out", str(tmp_path), "--steps", "jobs"]
    first = gpu_validate.main([*out, "--only", "m2f", "m2f_again"])
    assert first["jobs"] == {"m2f": "ok", "m2f_again": "ok"}, first["jobs"]
    assert first["rows"]["m2f"]["latency_ms_p50"] > 0 and first["ratios"]["repeat_p50_spread"] >= 0
    assert first["rows"]["m2f"]["invalid_reason"].startswith("energy not measured")  # NaN energy, with the reason
    # a second run resumes: measured rows come from the store; with no time left nothing new starts
    second = gpu_validate.main([*out, "--only", "m2f", "m2f_again", "ps333", "--deadline", "10"])
    assert second["jobs"]["m2f"] == second["jobs"]["m2f_again"] == "already measured"
    assert second["jobs"]["ps333"].startswith("skipped: deadline")
    assert second["rows"]["m2f"]["latency_ms_p50"] == first["rows"]["m2f"]["latency_ms_p50"]
    from bench.store import ResultStore

    with ResultStore(tmp_path / "results" / "results.sqlite") as store:
        assert len(store.rows("history")) == 2


def test_plan_lists_the_cold_compilations():
    planned = gpu_validate.plan(90, time_compiles=False)
    assert planned["steps"][:4] == ["environment", "correctness", "transformers", "jobs"]  # priority first
    assert planned["jobs"] == ["m2f", "ps333", "m2f_fastest", "ps333_fastest", "m2f_again"]
    assert planned["more_jobs"] == ["ps111", "lite_m2f", "rt_m2f"]
    assert planned["steps"].index("core_table") < planned["steps"].index("more_jobs")
    assert len(planned["compiles"]) == 8  # 1-4 levels x (fp32, bf16 value): the models and tables reuse them
    assert {c["config"] for c in planned["compiles"]} == {gpu_validate.TRITON_CONFIG}


def test_ratios_from_rows():
    rows = {"m2f": {"status": "ok", "gmacs_analytic_pixel_decoder": 100.0, "latency_ms_pixel_decoder_alone_p50": 40.0,
                    "latency_ms_p50": 80.0},
            "m2f_again": {"status": "ok", "latency_ms_p50": 84.0},
            "ps333": {"status": "ok", "gmacs_analytic_pixel_decoder": 50.0, "latency_ms_pixel_decoder_alone_p50": 30.0,
                      "latency_ms_p50": 70.0},
            "m2f_fastest": {"status": "ok", "latency_ms_pixel_decoder_alone_p50": 8.0},
            # other inputs: never the fastest M2F against transformers' 1024x2048 batch 1
            "m2f_coco": {"status": "ok", "latency_ms_pixel_decoder_alone_p50": 5.0},
            "m2f_batch8": {"status": "ok", "latency_ms_pixel_decoder_alone_p50": 4.0}}
    base = {"encbench": {"latency_ms_p50": 80.0}, "transformers": {"latency_ms_p50": 100.0,
                                                                   "latency_ms_pixel_decoder_p50": 40.0}}
    r = gpu_validate.ratios({"rows": rows, "transformers": base})
    conv = r["ps333_speed_conversion_eager_fp32_pytorch"]
    assert conv["mac_reduction"] == 0.5 and conv["pixel_decoder_conversion"] == pytest.approx(0.5)
    assert conv["model_conversion"] == pytest.approx(0.25)
    # the report's function computed it: with intervals, the same rows give the same numbers there
    from reports.tables import speed_conversion

    report = speed_conversion(pd.DataFrame([{**rows["m2f"], "encoder": "m2f", "variant": "m2f"},
                                            {**rows["ps333"], "encoder": "proscale", "variant": "ps"}]),
                              lat="latency_ms_pixel_decoder_alone_p50", macs="gmacs_analytic_pixel_decoder")
    assert report.set_index("variant").loc["ps", "speed_conversion"] == conv["pixel_decoder_conversion"]
    assert r["repeat_p50_spread"] == pytest.approx(4 / 82)
    assert r["m2f_vs_transformers_latency"] == pytest.approx(0.8)
    assert r["fastest_m2f_pixel_decoder_vs_transformers"]["speedup"] == pytest.approx(5.0)
    assert r["fastest_m2f_pixel_decoder_vs_transformers"]["ours_ms"] == 8.0


def test_both_sides_of_the_graph_check_run_under_the_same_precision_settings():
    from bench.runners import make_runner
    from scripts import gpu_checks

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = True  # torch's default: TF32 convolutions on a GPU
        model = gpu_checks.build(["encoder=m2f"], (32, 64), "cpu")
        log = gpu_checks.StateLog(model)
        x = torch.rand(1, 3, 32, 64) * 255
        with torch.no_grad():  # an eager reference under the defaults, as the check once ran it
            model(x, postprocess=False)
        default = log.take()
        run, _ = make_runner(model, x, {"device": torch.device("cpu"), "precision": "fp32", "mode": "eager"}, False)
        run()
        assert not gpu_checks.uniform(default, log.take())  # caught on CPU: TF32 convolutions on one side only
        torch.backends.cudnn.allow_tf32 = True
        check = gpu_checks.cudagraph_check(torch.device("cpu"), (32, 64), "eager")
        assert check["same_precision"] and check["equal"] and not check["eager_state"][0]["cudnn_tf32"]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_rehearsal_of_the_nvml_facts(tmp_path):
    from tests.test_energy import FakeNVML

    class Board(FakeNVML):
        """A fake board whose counter moves with the real clock (the tick and idle polls sleep for real)."""

        def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
            return int(time.monotonic() * 10) * 12_000  # 120 W, ticking every 0.1 s

        def nvmlDeviceGetEnforcedPowerLimit(self, handle) -> int:
            return 700_000

        def nvmlSystemGetDriverVersion(self) -> bytes:
            return b"580.1"

    v = gpu_validate.Validation(tmp_path, time.monotonic() + 60, smoke=True, nvml=Board())
    env = gpu_validate.environment(v)
    assert env["power_limit_w"] == 700.0 and env["sm_clock_mhz_max"] == 1980.0 and env["driver"] == "580.1"
    assert env["counter_tick_s"] == pytest.approx(0.1, abs=0.03) and env["idle_w"] == pytest.approx(120, rel=0.3)
    assert env["nvml_device"] == "nvml index 0 (no UUID match)" and env["temp_c_start"] == 35


def test_rehearsal_of_the_evaluation_step(tmp_path):
    summary = gpu_validate.main(["--smoke", "--out", str(tmp_path), "--steps", "evaluate"])
    assert summary["steps"]["evaluate"]["status"] == "ok", summary.get("evaluate")
    for precision in ("fp32", "bf16"):
        row = summary["evaluate"][precision]
        assert row["images"] == 2 and row["timed_images"] == 1 and row["compute_s_per_img"] > 0
    metrics = json.loads((tmp_path / "evaluate_fp32" / "metrics.json").read_text())
    assert metrics["panoptic"]["All"]["n"] > 0 and metrics["execution"]["device"] == "cpu"
