"""Roofline helper (floors from FLOPs, compulsory bytes and measured peaks) and the output-error measure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.config import compose
from bench.job import run_job
from bench.roofline import floor_ms, measure_ceilings, min_bytes_by_path, msda_floors, roofline_table

TINY = ["backbone=r50", "input=ade20k", "input.height=64", "input.width=96"]
FAST = ["timing.min_iters=3", "timing.min_seconds=0.01", "timing.warmup_min_seconds=0.0",
        "timing.warmup_max_seconds=0.05", "timing.stage_iters=2", "timing.bootstrap=50"]


def test_floor_is_the_slower_of_compute_and_memory():
    peaks = {"peak_tflops": 100.0, "peak_gbs": 1000.0}
    assert floor_ms(1e12, 1e6, peaks) == pytest.approx(10.0)  # 1 TFLOP at 100 TFLOP/s
    assert floor_ms(1e6, 1e9, peaks) == pytest.approx(1.0)  # 1 GB at 1000 GB/s
    table = roofline_table({"a": 1e12, "b": 1e6}, {"a": 1e6, "b": 1e9}, {"a": 20.0}, peaks)
    assert table["a"]["bound"] == "compute" and table["a"]["roofline_frac"] == pytest.approx(0.5)
    assert table["b"]["bound"] == "memory" and math.isnan(table["b"]["roofline_frac"])


class TwoViews(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        return self.lin(x) + self.lin(x.view(2, 4)).sum()  # the view reads no new bytes


def test_min_bytes_counts_distinct_tensors_and_parameters_once_per_call():
    model = TwoViews()
    x = torch.randn(2, 4)
    nbytes = min_bytes_by_path(model, {"lin": "lin", "all": ""}, lambda: model(x))
    # per lin call: input 32 B + output 64 B + weight 128 B + bias 32 B; called twice
    assert nbytes["lin"] == 2 * (32 + 64 + 128 + 32)
    assert nbytes[""] == 32 + 64 + 128 + 32  # the whole model: x once, its output, the parameters


def test_msda_floors_match_the_issue_figures_at_cityscapes_shapes():
    f = msda_floors(1, 43008, 43008, 8, 32, 3, 4, 4, peak_gbs=3350.0)
    assert f["gathered_mb"] == pytest.approx(2113.9, rel=1e-3)  # ~2.1 GB through L2
    assert 0.03 < f["dram_floor_ms"] < 0.06  # ~0.05 ms of DRAM traffic


def test_msda_floor_of_a_bf16_value_counts_fp32_locations_and_weights():
    n, s, m, d, lvl, p = 1, 43008, 8, 32, 3, 4
    samples = n * s * m * lvl * p
    bf16 = msda_floors(n, s, s, m, d, lvl, p, 2, peak_gbs=1000.0)
    # value read and output written at 2 bytes; x, y and the weight of every sample at 4 bytes
    assert bf16["dram_mb"] * 1e6 == 2 * s * m * d * 2 + samples * 3 * 4
    fp32 = msda_floors(n, s, s, m, d, lvl, p, 4)
    assert bf16["dram_mb"] / fp32["dram_mb"] == pytest.approx(0.68, abs=0.005)  # not 0.5: the samples stay fp32
    assert bf16["gathered_mb"] == fp32["gathered_mb"] / 2  # taps gather the value only


def test_ceilings_on_cpu_are_measured_and_cached():
    c = measure_ceilings("cpu", "fp32", size=256, copy_mb=16)
    assert c["peak_tflops"] > 0 and c["peak_gbs"] > 0 and math.isfinite(c["peak_tflops"])
    assert measure_ceilings("cpu", "fp32", size=256, copy_mb=16) is c


@pytest.mark.slow
def test_roofline_and_pixel_decoder_alone_in_a_job(tmp_path):
    row = run_job(compose([*TINY, "measure=[latency,roofline]", *FAST]), tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["latency_ms_pixel_decoder_alone_p50"] > 0
    assert 0 < row["floor_ms_pixel_decoder"] < row["floor_ms_total"]
    assert 0 < row["mbytes_min_pixel_decoder"] < row["mbytes_min_total"]
    assert row["roofline_frac_total"] > 0 and row["roofline_frac_pixel_decoder"] > 0
    assert row["peak_tflops"] > 0 and row["peak_gbs"] > 0


@pytest.mark.slow
def test_output_error_of_bf16_with_and_without_an_fp32_pixel_decoder(tmp_path):
    rows = {}
    runs = {"fp32": ["precision=fp32"], "tf32": ["precision=tf32"], "pd_fp32": ["precision=bf16"],
            "pd_bf16": ["precision=bf16", "encoder.force_fp32=false"]}
    for key, extra in runs.items():
        rows[key] = run_job(compose([*TINY, "measure=error", *extra]), tmp_path / key)
        assert rows[key]["status"] == "ok", rows[key]["error"]
    assert math.isnan(rows["fp32"]["err_pred_masks_rel"])  # the reference itself
    assert rows["tf32"]["err_pred_masks_rel"] == 0.0  # TF32 touches CUDA matmuls only: identical on CPU
    assert rows["pd_bf16"]["force_fp32"] is False and rows["pd_fp32"]["force_fp32"] is True
    for key in ("pd_fp32", "pd_bf16"):
        assert 0 < rows[key]["err_pred_masks_rel"] < 0.2 and 0.9 < rows[key]["mask_agreement"] <= 1.0
    # running the pixel decoder in bf16 adds error to what it outputs
    assert rows["pd_bf16"]["err_mask_features_rel"] > rows["pd_fp32"]["err_mask_features_rel"]
