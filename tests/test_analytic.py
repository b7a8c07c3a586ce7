"""The analytic MAC model against the derived figures of docs/models.md (§2.4, §3, §4, §5.5, §6.3)."""

from __future__ import annotations

import pytest

from models.encoders.analytic import Tokens, deform_layer, pixel_decoder_macs
from tests.test_params import CHANNELS

R50 = CHANNELS["r50"]
ENC = {"m2f": {"name": "m2f"}, "proscale": {"name": "proscale", "layers": [3, 3, 3], "lpe": True},
       "lite": {"name": "lite_m2f"}, "rt": {"name": "rt_m2f"}}


def g(macs: int) -> float:
    return round(macs / 1e9, 1)


def test_tokens_of_the_worked_example():
    assert Tokens.from_size(800, 1088) == Tokens(54_400, 13_600, 3_400, 850)
    assert Tokens.from_size(800, 1067) == Tokens.from_size(800, 1088)  # padded to 32


def test_per_token_layer_macs():
    per_token = {lv: deform_layer(1, 1, lv)[0] for lv in (1, 2, 3)}
    assert per_token == {1: 685_056, 2: 714_752, 3: 744_448}


def aifi(t: Tokens) -> int:
    return 4 * t.n32 * 256**2 + 2 * t.n32**2 * 256 + 2 * t.n32 * 256 * 1024


# docs/models.md §7: RT is "AIFI + CCFM" at 800x1088 but CCFM alone (no AIFI) at the other sizes
@pytest.mark.parametrize("size,expected,rt_has_aifi", [
    ((800, 1088), {"m2f": 79.7, "proscale": 50.7, "lite": 36.0, "rt": 51.2}, True),
    ((1024, 1024), {"m2f": 96.1, "proscale": 61.1, "lite": 43.4, "rt": 60.4}, False),
    ((512, 1024), {"m2f": 48.0, "proscale": 30.6, "lite": 21.7, "rt": 30.2}, False),
    ((640, 640), {"m2f": 37.5, "proscale": 23.9, "lite": 16.9, "rt": 23.6}, False),
])
def test_encoder_only_matches_the_documented_figures(size, expected, rt_has_aifi):
    got = {k: pixel_decoder_macs(cfg, R50, *size)["encoder_formula"] for k, cfg in ENC.items()}
    if not rt_has_aifi:
        got["rt"] -= aifi(Tokens.from_size(*size))
    assert {k: g(v) for k, v in got.items()} == expected


def test_variants_match_the_documented_figures():
    def enc(cfg):
        return g(pixel_decoder_macs(cfg, R50, 800, 1088)["encoder_formula"])

    assert enc({"name": "proscale", "layers": [1, 1, 1]}) == 16.9
    assert enc({"name": "lite_m2f", "small_ffn": False}) == 52.0
    assert enc({"name": "lite_m2f", "kda": True}) == 39.7
    assert enc({"name": "lite_m2f", "kda": True, "small_ffn": False}) == 55.8
    assert enc({"name": "lite_m2f", "high_levels": 1}) == 25.1
    ccfm_half = pixel_decoder_macs({"name": "rt_m2f", "expansion": 0.5}, R50, 800, 1088)["encoder_formula"]
    assert g(ccfm_half - aifi(Tokens.from_size(800, 1088))) == 16.7  # CCFM with e = 0.5 (docs/models.md §4.3)
    assert g(aifi(Tokens.from_size(800, 1088))) == 1.0


def test_pixel_decoder_totals():
    m2f = pixel_decoder_macs(ENC["m2f"], R50, 800, 1088)
    ps = pixel_decoder_macs(ENC["proscale"], R50, 800, 1088)
    assert m2f["pixel_decoder"] == m2f["pixel_decoder_layers"] + m2f["pixel_embedding"]
    assert g(m2f["pixel_decoder"]) == pytest.approx(122.7, abs=0.6)  # docs/models.md §2.6
    assert g(ps["pixel_decoder"]) == pytest.approx(61, abs=1.0)      # docs/models.md §5.5
    assert 0.48 < 1 - ps["pixel_decoder"] / m2f["pixel_decoder"] < 0.53
    lpe_saving = pixel_decoder_macs({**ENC["proscale"], "lpe": False}, R50, 800, 1088)["pixel_embedding"] - ps[
        "pixel_embedding"]
    assert g(lpe_saving) == 32.1  # the 3x3 stride-4 conv that LPE removes
    assert pixel_decoder_macs(ENC["m2f"], R50, 800, 1088, batch=4)["pixel_decoder"] == 4 * m2f["pixel_decoder"]


def test_unknown_encoder():
    with pytest.raises(ValueError, match="no analytic model for encoder 'fpn'; encoders with one: lite_m2f, m2f, "
                                         "proscale, rt_m2f"):
        pixel_decoder_macs({"name": "fpn"}, R50, 64, 64)


@pytest.mark.slow
def test_an_encoder_without_an_analytic_model_gives_nan_not_a_failed_job(tmp_path):
    """A new encoder is one file: registered here without ``analytic_layers``, it still measures."""
    import math

    from bench.config import compose, to_dict
    from bench.job import run_job
    from models.encoders import ENCODERS, variant_name
    from models.encoders.m2f import M2FPixelDecoder

    class Toy(M2FPixelDecoder):  # M2F's modules with the base class's "no analytic model"
        analytic_layers = staticmethod(lambda tokens, **options: None)

    ENCODERS.register("toy")(Toy)
    try:
        cfg = to_dict(compose(["backbone=r50", "input.height=64", "input.width=64", "measure=flops"]))
        cfg["encoder"] = {**cfg["encoder"], "name": "toy", "num_layers": 1}
        row = run_job(cfg, tmp_path)
        assert row["status"] == "ok", row["error"]
        assert math.isnan(row["gmacs_analytic_pixel_decoder"]) and row["gmacs_pixel_decoder"] > 0
        assert row["variant"] == variant_name(cfg["encoder"]) == "m2f(1)"  # the label the class inherits
    finally:
        ENCODERS._entries.pop("toy")
