"""Config composition and bad input: clear errors that name the valid choices."""

from __future__ import annotations

import re

import pytest
import torch

from bench.config import ConfigError, compose
from models import build_model
from models.registry import UnknownNameError


def test_presets():
    assert [(c.input.height, c.input.width) for c in (compose([f"input={n}"]) for n in ("coco", "cityscapes", "ade20k"))
            ] == [(800, 1088), (1024, 2048), (512, 512)]
    cfg = compose(["input=cityscapes", "input.height=512", "input.batch=4"])
    assert (cfg.input.height, cfg.input.width, cfg.input.batch) == (512, 2048, 4)


def test_swin_l_uses_200_queries_and_dataset_classes():
    cfg = compose(["backbone=swin_l", "input=cityscapes"])
    assert cfg.decoder.num_queries == 200 and cfg.decoder.num_classes == 19
    assert compose(["backbone=swin_t"]).decoder.num_queries == 100
    assert compose(["backbone=swin_l", "decoder.num_queries=50"]).decoder.num_queries == 50


@pytest.mark.parametrize("override,valid", [("backbone=resnet50", "swin_t"), ("encoder=deformable", "m2f"),
                                            ("input=kitti", "cityscapes")])
def test_unknown_group_option_lists_valid(override, valid):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert valid in str(err.value) and "Config search path" not in str(err.value)


@pytest.mark.parametrize("override,listed", [("encoder.n_layers=3", "valid keys of encoder (m2f): d_model, dropout"),
                                             ("seeds=1", "valid keys at the top level: backbone, decoder, device")])
def test_unknown_key_lists_the_valid_keys(override, listed):
    with pytest.raises(ConfigError, match=re.escape(listed)):
        compose([override])


def test_unknown_registry_names_list_valid(small_cfg):
    cfg = small_cfg()
    cfg.backbone.name = "vit_h"
    with pytest.raises(UnknownNameError, match="unknown backbone 'vit_h'; valid choices: r101, r50, swin_b"):
        build_model(cfg)
    cfg = small_cfg()
    cfg.encoder.name = "fpn"
    with pytest.raises(UnknownNameError, match="valid choices: lite_m2f, m2f, proscale, rt_m2f"):
        build_model(cfg)


def test_unknown_option_lists_valid(small_cfg):
    cfg = small_cfg("+encoder.n_layers=3")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_layers'\] for encoder 'm2f'.*num_layers"):
        build_model(cfg)


@pytest.mark.parametrize("key,val", [("height", 0), ("width", -32), ("batch", 0)])
def test_non_positive_sizes(key, val, small_cfg):
    with pytest.raises(ValueError, match=f"input.{key} must be a positive integer"):
        build_model(small_cfg(f"input.{key}={val}"))


@pytest.mark.slow
def test_invalid_knobs(small_cfg):
    with pytest.raises(ValueError, match="num_layers=0 must be >= 1"):
        build_model(small_cfg("encoder.num_layers=0"))
    with pytest.raises(ValueError, match="num_queries=0 must be >= 1"):
        build_model(small_cfg("decoder.num_queries=0"))
    with pytest.raises(ValueError, match="tasks must be a non-empty subset"):
        build_model(small_cfg("input.tasks=[depth]"))


def test_wrong_channel_count(small_cfg):
    model = build_model(small_cfg("backbone=r50"))
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\), got \(1, 4, 64, 64\)"):
        model(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"backbone 'r50' expects images \(B, 3, H, W\)"):
        model.backbone(torch.rand(1, 1, 64, 64))
    feats = {k: torch.randn(1, c, 8, 8) for k, c in model.backbone.out_channels.items()}
    feats["res4"] = torch.randn(1, 512, 8, 8)
    with pytest.raises(ValueError, match=r"backbone feature 'res4' must be \(B, 1024, H, W\)"):
        model.pixel_decoder(feats)
    with pytest.raises(ValueError, match="multiple of 32"):
        model.backbone(torch.rand(1, 3, 50, 64))
