"""End-to-end forward of the full model: stage shapes, padding, post-processing outputs."""

from __future__ import annotations

import pytest
import torch

from models import STAGES, build_model
from models.segmentor import pad_to_divisible
from tests.conftest import n_params

BACKBONES = ["r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l"]


def stage_outputs(model, images):
    """Run stage by stage, returning every intermediate output."""
    x = model.preprocess(images)
    feats = model.backbone(x)
    pix = model.pixel_decoder(feats)
    dec = model.transformer_decoder(pix.multi_scale_features, pix.mask_features)
    return x, feats, pix, dec


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_every_backbone(backbone, small_cfg):
    cfg = small_cfg(f"backbone={backbone}", "input=cityscapes", "input.height=256", "input.width=384")
    model = build_model(cfg)
    b, h, w = 1, 256, 384
    with torch.no_grad():
        x, feats, pix, dec = stage_outputs(model, torch.rand(b, 3, h, w) * 255)
    widths = list(model.backbone.out_channels.values())
    for (name, f), s, c in zip(feats.items(), (4, 8, 16, 32), widths, strict=True):
        assert f.shape == (b, c, h // s, w // s), name
    assert pix.mask_features.shape == (b, 256, h // 4, w // 4)
    assert [tuple(m.shape) for m in pix.multi_scale_features] == [(b, 256, h // s, w // s) for s in (32, 16, 8)]
    assert pix.transformer_encoder_features is pix.multi_scale_features[0]
    queries = 200 if backbone == "swin_l" else 100
    assert dec["pred_logits"].shape == (b, queries, 20)
    assert dec["pred_masks"].shape == (b, queries, h // 4, w // 4)
    assert len(dec["aux_outputs"]) == 9
    assert all(torch.isfinite(t).all() for t in (pix.mask_features, dec["pred_masks"], dec["pred_logits"]))


@pytest.mark.slow
def test_forward_realistic_swin_t_with_postprocess(small_cfg):
    cfg = small_cfg("backbone=swin_t", "input=coco")  # 800x1088 padded COCO size
    model = build_model(cfg)
    h, w = cfg.input.height, cfg.input.width
    images = torch.rand(1, 3, h, w) * 255
    with torch.no_grad():
        raw = model(images, postprocess=False)
        (res,) = model(images)
    assert raw["pred_masks"].shape == (1, 100, h // 4, w // 4)
    assert set(res) == {"sem_seg", "panoptic_seg", "instances"}
    assert res["sem_seg"].shape == (133, h, w) and res["sem_seg"].dtype == torch.float32
    seg, info = res["panoptic_seg"]
    assert seg.shape == (h, w) and seg.dtype == torch.int32
    assert isinstance(info, list) and all({"id", "isthing", "category_id"} <= set(s) for s in info)
    assert set(seg.unique().tolist()) <= {0} | {s["id"] for s in info}
    inst = res["instances"]
    n = inst["scores"].shape[0]
    assert inst["pred_masks"].shape == (n, h, w) and n <= 100
    assert set(inst["pred_classes"].tolist()) <= set(range(80))  # panoptic models keep only "things"
    assert ((inst["scores"] >= 0) & (inst["scores"] <= 1)).all()


@pytest.mark.slow
def test_unpadded_input_is_padded_and_cropped_back(small_cfg):
    model = build_model(small_cfg("backbone=r50", "input=ade20k"))
    images = torch.rand(2, 3, 250, 300) * 255
    with torch.no_grad():
        x = model.preprocess(images)
        out = model(images)
    assert x.shape[-2:] == (256, 320)
    assert (x[..., 250:, :] == 0).all() and (x[..., :, 300:] == 0).all()  # zeros after normalisation
    assert [r["sem_seg"].shape for r in out] == [(150, 250, 300)] * 2
    assert set(out[0]) == {"sem_seg"}  # ADE20K preset: semantic only


def test_pad_to_divisible():
    x = torch.ones(1, 3, 33, 64)
    y = pad_to_divisible(x, 32)
    assert y.shape == (1, 3, 64, 64) and y[..., 33:, :].abs().sum() == 0 and y[..., :33, :].min() == 1
    assert pad_to_divisible(x[..., :32, :], 32).shape == (1, 3, 32, 64)


def test_stage_modules_cover_the_model(small_cfg):
    model = build_model(small_cfg())
    stages = model.stage_modules()
    assert set(STAGES) <= set(stages)
    assert n_params(stages["pixel_decoder"]) == n_params(stages["pixel_decoder_layers"]) + n_params(
        stages["pixel_embedding"])


@pytest.mark.slow
def test_pixel_decoder_stays_fp32_under_autocast(small_cfg):
    model = build_model(small_cfg("backbone=r50"))
    feats = {k: torch.randn(1, c, 256 // s, 384 // s)
             for (k, c), s in zip(model.backbone.out_channels.items(), (4, 8, 16, 32), strict=True)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.pixel_decoder({k: v.bfloat16() for k, v in feats.items()})
        model.pixel_decoder.force_fp32 = False
        low = model.pixel_decoder(feats)
    assert out.mask_features.dtype == torch.float32
    assert low.mask_features.dtype == torch.bfloat16


@pytest.mark.slow
def test_gpu_baseline_script_cpu_path(tmp_path):
    """The GPU baseline script's CPU path: both models, same parameter count, a stage split."""
    import json

    from scripts.gpu_baseline import main

    rows = main(["--device", "cpu", "--height", "128", "--width", "128", "--iters", "1", "--warmup", "0",
                 "--out", str(tmp_path / "b.json")])
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["encbench", "transformers"]
    assert rows[0]["params"] == rows[1]["params"]
    for r in rows:
        stages = sum(r[f"latency_ms_{s}_p50"] for s in ("backbone", "pixel_decoder", "transformer_decoder"))
        assert 0 < stages <= r["latency_ms_model_p50"]  # disjoint parts of the same timed calls
        assert 0 < r["pixel_decoder_share"] < 1
