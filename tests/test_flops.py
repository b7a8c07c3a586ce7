"""FLOP counters on modules with hand-computable MACs, against the analytic model, and per stage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.flops import count_dispatch, count_flops, count_fvcore, flop_formulas, is_compute_op
from models import build_model
from models.encoders import ENCODERS
from models.encoders.analytic import pixel_decoder_macs
from models.layers import MSDeformAttn
from tests.test_params import CHANNELS


def counts(module: nn.Module, *inputs: torch.Tensor) -> dict:
    """(fvcore MACs, FlopCounterMode FLOPs, ptflops MACs) and the unsupported-op reports."""
    fv = count_fvcore(module, inputs, {})
    dp = count_dispatch(module, inputs, {}, root=type(module).__name__)
    return {"fvcore": fv["total"], "fcm": dp["total"], "ptflops": dp["ptflops_total"], "fv": fv, "dp": dp}


class GridSample(nn.Module):
    def __init__(self, grid: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("grid", grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, self.grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_conv():
    c = counts(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.randn(1, 3, 16, 16))
    macs = 8 * 3 * 9 * 16 * 16
    assert (c["fvcore"], c["fcm"], c["ptflops"]) == (macs, 2 * macs, macs)


def test_linear():
    c = counts(nn.Linear(16, 32, bias=False), torch.randn(4, 16))
    macs = 4 * 16 * 32
    assert (c["fvcore"], c["fcm"], c["ptflops"]) == (macs, 2 * macs, macs)


def test_grid_sample_counted_by_fvcore_and_fcm_reported_by_ptflops():
    c = counts(GridSample(torch.rand(2, 4, 6, 2) * 2 - 1), torch.randn(2, 3, 5, 7))
    out_numel = 2 * 3 * 4 * 6
    assert (c["fvcore"], c["fcm"], c["ptflops"]) == (4 * out_numel, 8 * out_numel, 0)
    assert c["dp"]["ptflops_unsupported"] == {"aten.grid_sampler_2d": 1}  # nothing silently zero
    assert c["dp"]["coverage"] == 1.0 and c["dp"]["unsupported"] == {}


class MSDA(nn.Module):
    def __init__(self, shapes, lq: int, c: int = 32, m: int = 4, lv: int = 2, p: int = 3) -> None:
        super().__init__()
        self.attn, self.shapes = MSDeformAttn(c, lv, m, p), shapes
        self.register_buffer("ref", torch.rand(1, lq, lv, 2))

    def forward(self, query: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return self.attn(query, self.ref, value, self.shapes)


def test_msda_module():
    shapes, lq, c, m, lv, p = [(4, 6), (2, 3)], 5, 32, 4, 2, 3
    s = sum(h * w for h, w in shapes)
    mod = MSDA(shapes, lq, c, m, lv, p)
    got = counts(mod, torch.randn(1, lq, c), torch.randn(1, s, c))
    linears = s * c * c + lq * (c * c + c * m * lv * p * 2 + c * m * lv * p)  # value, output, offsets, weights
    bilinear = 4 * lv * p * c * lq  # grid_sample: 4 per sampled element
    assert got["fvcore"] == linears + bilinear  # the L*P*C weighted sum (mul + sum) is uncounted, as upstream
    assert got["fcm"] == 2 * (linears + bilinear)
    biases = s * c + lq * (c + m * lv * p * 2 + m * lv * p)
    assert got["ptflops"] == linears + biases  # ptflops' addmm also counts the bias add, one per output
    assert "aten::sum" in got["fv"]["unsupported"] and not is_compute_op("aten::sum")


def test_compute_op_classification():
    assert is_compute_op("aten.convolution") and is_compute_op("aten::baddbmm")
    assert is_compute_op("aten._scaled_dot_product_flash_attention_for_cpu")
    assert is_compute_op("encbench.msda") and not is_compute_op("aten.add") and not is_compute_op("aten::view")


class PixelDecoderFn(nn.Module):
    def __init__(self, dec: nn.Module) -> None:
        super().__init__()
        self.dec = dec

    def forward(self, res2, res3, res4, res5):
        return self.dec({"res2": res2, "res3": res3, "res4": res4, "res5": res5})


ENCODER_CFGS = [{"name": "m2f"}, {"name": "proscale", "layers": [3, 3, 3], "lpe": True, "trc": "faithful"},
                {"name": "proscale", "layers": [1, 1, 1], "lpe": False, "trc": "off"}, {"name": "lite_m2f"},
                {"name": "rt_m2f"}]


@pytest.mark.slow
@pytest.mark.parametrize("enc", ENCODER_CFGS, ids=lambda e: "-".join(str(v) for v in e.values()))
@pytest.mark.parametrize("size", [(256, 384), (320, 192)])
def test_fvcore_pixel_decoder_within_1pct_of_analytic(enc, size):
    ch = CHANNELS["swin_t"]
    dec = ENCODERS.get(enc["name"])(ch, **{k: v for k, v in enc.items() if k != "name"}).eval()
    h, w = size
    feats = [torch.randn(1, c, h // s, w // s) for c, s in zip(ch.values(), (4, 8, 16, 32), strict=True)]
    fv = count_fvcore(PixelDecoderFn(dec), tuple(feats), {})
    analytic = pixel_decoder_macs(enc, ch, h, w)["pixel_decoder"]
    assert abs(fv["total"] - analytic) / analytic < 0.01, (fv["total"], analytic, fv["unsupported"])


@pytest.mark.slow
def test_stage_sums_equal_totals(small_cfg):
    model = build_model(small_cfg("backbone=r50", "encoder=proscale", "input.height=128", "input.width=192"))
    row = count_flops(model, torch.rand(1, 3, 128, 192) * 255)
    for unit in ("gmacs", "gflops"):
        top = sum(row[f"{unit}_{s}"] for s in ("backbone", "pixel_decoder", "transformer_decoder", "postprocess"))
        assert top == pytest.approx(row[f"{unit}_total"], rel=1e-12)
        assert row[f"{unit}_pixel_decoder_layers"] + row[f"{unit}_pixel_embedding"] == pytest.approx(
            row[f"{unit}_pixel_decoder"], rel=1e-12)
        assert all(row[f"{unit}_{s}"] > 0 for s in ("backbone", "pixel_decoder", "transformer_decoder", "postprocess"))
    # true FLOPs are twice fvcore's MACs where both count the same ops (the pixel decoder here)
    assert row["gflops_pixel_decoder"] == pytest.approx(2 * row["gmacs_pixel_decoder"], rel=1e-9)
    assert row["flop_coverage"] == 1.0 and row["flop_coverage_fvcore"] == 1.0
    assert set(row["unsupported_ops"]) == {"fvcore", "flop_counter", "ptflops"}
    assert row["gmacs_ptflops_total"] < row["gmacs_total"]  # ptflops' aten backend skips norms, grid_sample, ...


@pytest.mark.slow
def test_attention_convention_switch(small_cfg):
    model = build_model(small_cfg("backbone=swin_t", "input.height=64", "input.width=64"))
    x = torch.rand(1, 3, 64, 64) * 255
    with_attn = count_fvcore(model, (x,), {}, count_attention=True)
    without = count_fvcore(model, (x,), {}, count_attention=False)
    assert with_attn["total"] > without["total"]
    assert "aten::scaled_dot_product_attention" in without["unsupported"]
    assert "aten::baddbmm" in without["unsupported"] and without["coverage"] < 1.0


def test_captured_call_swaps_tensors_inside_dataclasses():
    """_Call feeds traced tensors back in the order tensors_in lists them, dataclasses included."""
    import dataclasses

    from bench.flops import _Call

    @dataclasses.dataclass
    class Pair:
        a: torch.Tensor
        scale: float

    lin = torch.nn.Linear(4, 3)
    pair = Pair(torch.randn(2, 4), 2.0)
    call = _Call(lambda p: lin(p.a) * p.scale, (pair,), {})
    new = torch.randn(2, 4)
    (out,) = call(new)
    torch.testing.assert_close(out, lin(new) * 2.0)


def test_every_norm_forward_a_gpu_can_dispatch_to_has_a_formula():
    """Eval BatchNorm reaches cudnn_batch_norm on CUDA and native_batch_norm on CPU: both must count the same."""
    import re

    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    from bench.flops import NORM_FORWARD_OPS

    formulas = flop_formulas()
    missing = [str(op) for op in NORM_FORWARD_OPS if op not in formulas and op not in flop_registry]
    assert not missing, f"norm forwards without a FLOP formula: {missing}"
    # every aten norm forward that reaches a kernel is listed (composites decompose first; training,
    # statistics-only, quantized and out= variants never run in an eval forward)
    skip = re.compile(r"backward|update|stats|elemt|functional|quantized|legit$|impl_index|rms|^(batch|layer|group|"
                      r"instance)_norm$")
    names = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("aten::") and re.search(r"(batch|layer|group|instance|rms)_norm", n)}
    listed = {str(op).split(".")[1] for op in NORM_FORWARD_OPS}
    assert {n for n in names if not skip.search(n)} <= listed
    # the CUDA and CPU batch-norm forwards count identically (meta tensors: no GPU needed)
    x, c = torch.empty(2, 8, 5, 7, device="meta"), torch.empty(8, device="meta")
    counts = {}
    for op in (torch.ops.aten.cudnn_batch_norm, torch.ops.aten.native_batch_norm, torch.ops.aten.miopen_batch_norm):
        fcm = FlopCounterMode(display=False, custom_mapping=formulas)
        with fcm:
            op(x, c, c, c, c, False, 0.1, 1e-5)
        counts[str(op)] = fcm.get_total_flops()
    assert set(counts.values()) == {2 * 2 * 8 * 5 * 7}, counts
