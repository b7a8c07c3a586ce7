"""The one-command GPU validation, rehearsed on CPU: tiny shapes, the triton core in Triton's interpreter,
real jobs in fresh processes into a store, resume, and the deadline."""

from __future__ import annotations

import json

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
    assert check["cudagraph_equals_eager"] == "skipped: needs CUDA"
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
    assert planned["steps"][0] == "environment" and planned["jobs"][:3] == ["m2f", "m2f_again", "ps333"]
    assert len(planned["compiles"]) == 8  # 1-4 levels x (fp32, bf16 value): the models and tables reuse them
    assert {c["config"] for c in planned["compiles"]} == {gpu_validate.TRITON_CONFIG}


def test_ratios_from_rows():
    rows = {"m2f": {"status": "ok", "gmacs_analytic_pixel_decoder": 100.0, "latency_ms_pixel_decoder_alone_p50": 40.0,
                    "latency_ms_p50": 80.0},
            "m2f_again": {"status": "ok", "latency_ms_p50": 84.0},
            "ps333": {"status": "ok", "gmacs_analytic_pixel_decoder": 50.0, "latency_ms_pixel_decoder_alone_p50": 30.0,
                      "latency_ms_p50": 70.0},
            "m2f_fastest": {"status": "ok", "latency_ms_pixel_decoder_alone_p50": 8.0}}
    base = {"encbench": {"latency_ms_p50": 80.0}, "transformers": {"latency_ms_p50": 100.0,
                                                                   "latency_ms_pixel_decoder_p50": 40.0}}
    r = gpu_validate.ratios({"rows": rows, "transformers": base})
    conv = r["ps333_speed_conversion_eager_fp32_pytorch"]
    assert conv["mac_reduction"] == 0.5 and conv["pixel_decoder_conversion"] == pytest.approx(0.5)
    assert conv["model_conversion"] == pytest.approx(0.25)
    assert r["repeat_p50_spread"] == pytest.approx(4 / 82)
    assert r["m2f_vs_transformers_latency"] == pytest.approx(0.8)
    assert r["fastest_m2f_pixel_decoder_vs_transformers"]["speedup"] == pytest.approx(5.0)


def test_rehearsal_of_the_evaluation_step(tmp_path):
    summary = gpu_validate.main(["--smoke", "--out", str(tmp_path), "--steps", "evaluate"])
    assert summary["steps"]["evaluate"]["status"] == "ok", summary.get("evaluate")
    for precision in ("fp32", "bf16"):
        row = summary["evaluate"][precision]
        assert row["images"] == 2 and row["timed_images"] == 1 and row["compute_s_per_img"] > 0
    metrics = json.loads((tmp_path / "evaluate_fp32" / "metrics.json").read_text())
    assert metrics["panoptic"]["All"]["n"] > 0 and metrics["execution"]["device"] == "cpu"
