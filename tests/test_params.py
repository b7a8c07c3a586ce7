"""Parameter counts derived here from layer shapes, compared with the built modules."""

from __future__ import annotations

import pytest

from models.backbones import BACKBONES
from models.decoders import DECODERS
from models.encoders import ENCODERS
from models.layers import MSDeformEncoderLayer
from tests.conftest import n_params

C, M, P, F_ENC, F_DEC = 256, 8, 4, 1024, 2048
CHANNELS = {
    "r50": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
    "swin_t": {"res2": 96, "res3": 192, "res4": 384, "res5": 768},
    "swin_l": {"res2": 192, "res3": 384, "res4": 768, "res5": 1536},
}


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def conv(i: int, o: int, k: int, bias: bool) -> int:
    return i * o * k * k + (o if bias else 0)


def norm(c: int) -> int:  # GroupNorm / LayerNorm with affine weight and bias
    return 2 * c


def msda(levels: int) -> int:
    return linear(C, M * levels * P * 2) + linear(C, M * levels * P) + 2 * linear(C, C)


def encoder_layer(levels: int) -> int:
    return msda(levels) + 2 * norm(C) + linear(C, F_ENC) + linear(F_ENC, C)


def m2f_pixel_decoder(ch: dict[str, int], layers: int = 6) -> int:
    input_proj = sum(conv(ch[k], C, 1, True) + norm(C) for k in ("res3", "res4", "res5"))
    level_embed = 3 * C
    pixel_embedding = (conv(ch["res2"], C, 1, False) + norm(C)      # lateral
                       + conv(C, C, 3, False) + norm(C)            # 3x3 output conv
                       + conv(C, C, 1, True))                      # mask_features
    return input_proj + level_embed + layers * encoder_layer(3) + pixel_embedding


def transformer_decoder(queries: int, classes: int = 133, layers: int = 9) -> int:
    mha = 4 * C * C + 4 * C  # packed in-projection (q, k, v) + out-projection
    per_layer = 2 * (mha + norm(C)) + linear(C, F_DEC) + linear(F_DEC, C) + norm(C)
    heads = norm(C) + linear(C, classes + 1) + 3 * linear(C, C)
    return layers * per_layer + heads + 2 * queries * C + 3 * C


def test_encoder_layer_three_levels():
    assert n_params(MSDeformEncoderLayer(C, F_ENC, 0.0, 3, M, P)) == encoder_layer(3)
    assert encoder_layer(3) == 732_192  # docs/models.md §1


@pytest.mark.parametrize("backbone", sorted(CHANNELS))
def test_m2f_pixel_decoder(backbone):
    dec = ENCODERS.get("m2f")(CHANNELS[backbone])
    assert n_params(dec) == m2f_pixel_decoder(CHANNELS[backbone])


def test_m2f_pixel_decoder_published_sizes():
    # docs/models.md §1: 6.036 M (R50), 5.422 M (Swin-T), 5.790 M (Swin-L)
    assert [round(m2f_pixel_decoder(CHANNELS[b]) / 1e6, 3) for b in ("r50", "swin_t", "swin_l")] == [
        6.036, 5.422, 5.790]


@pytest.mark.parametrize("queries", [100, 200])
def test_transformer_decoder(queries):
    dec = DECODERS.get("m2f")(num_queries=queries, num_classes=133)
    assert n_params(dec) == transformer_decoder(queries)


def test_transformer_decoder_published_sizes():
    assert round(transformer_decoder(100) / 1e6, 3) == 14.493
    assert round(transformer_decoder(200) / 1e6, 3) == 14.544


@pytest.mark.parametrize("name,published", [("r50", 44.0e6), ("swin_t", 47.4e6)])
def test_whole_model_near_published(name, published, small_cfg):
    from models import build_model

    model = build_model(small_cfg(f"backbone={name}"))
    total = n_params(model)
    stages = model.stage_modules()
    assert n_params(stages["pixel_decoder"]) == m2f_pixel_decoder(CHANNELS[name])
    assert n_params(stages["transformer_decoder"]) == transformer_decoder(100)
    assert total == sum(n_params(stages[s]) for s in ("backbone", "pixel_decoder", "transformer_decoder"))
    assert abs(total - published) / published < 0.01, total


@pytest.mark.slow
def test_backbone_channels():
    for name, ch in CHANNELS.items():
        assert BACKBONES.get(name)().out_channels == ch
