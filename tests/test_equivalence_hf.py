"""Numerical equivalence with an independent implementation: transformers' Mask2Former.

Weights are copied from transformers' modules into ours through an explicit name map; every
parameter is first re-drawn at random (upstream's init zeroes the offset and attention-weight
linears, which would hide sampling bugs). fp32, max abs difference <= 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerTransformerModule,
)

from models.decoders import DECODERS
from models.encoders import ENCODERS

SWIN_T = {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
TOL = 1e-4


def hf_config(**kw) -> Mask2FormerConfig:
    return Mask2FormerConfig(feature_size=256, mask_feature_size=256, hidden_dim=256, encoder_layers=6,
                             encoder_feedforward_dim=1024, num_attention_heads=8, dropout=0.0, dim_feedforward=2048,
                             decoder_layers=10, pre_norm=False, common_stride=4, feature_strides=[4, 8, 16, 32], **kw)


def randomize(module: nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


def pixel_decoder_map(hf_sd: dict) -> dict:
    """transformers Mask2FormerPixelDecoder names -> ours."""
    out = {}
    for k, v in hf_sd.items():
        new = (k.replace("input_projections.", "transformer.input_proj.")
                .replace("level_embed", "transformer.level_embed")
                .replace("encoder.layers.", "transformer.layers.")
                .replace("self_attn_layer_norm", "norm1").replace("final_layer_norm", "norm2")
                .replace(".fc1.", ".linear1.").replace(".fc2.", ".linear2.")
                .replace("adapter_1.", "pixel_embedding.lateral_conv.")
                .replace("layer_1.", "pixel_embedding.output_conv.")
                .replace("mask_projection.", "pixel_embedding.mask_features."))
        out[new] = v
    return out


def decoder_map(hf_sd: dict, class_predictor: nn.Linear, layers: int) -> dict:
    """transformers Mask2FormerTransformerModule (+ class predictor) names -> ours."""
    out = {"query_embed.weight": hf_sd["queries_embedder.weight"],
           "query_feat.weight": hf_sd["queries_features.weight"],
           "level_embed.weight": hf_sd["level_embed.weight"],
           "decoder_norm.weight": hf_sd["decoder.layernorm.weight"],
           "decoder_norm.bias": hf_sd["decoder.layernorm.bias"],
           "class_embed.weight": class_predictor.weight, "class_embed.bias": class_predictor.bias}
    for j in range(3):
        for t in ("weight", "bias"):
            out[f"mask_embed.layers.{j}.{t}"] = hf_sd[f"decoder.mask_predictor.mask_embedder.{j}.0.{t}"]
    for i in range(layers):
        src = f"decoder.layers.{i}."
        ca, sa, ffn = (f"transformer_cross_attention_layers.{i}.", f"transformer_self_attention_layers.{i}.",
                       f"transformer_ffn_layers.{i}.")
        for t in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            out[ca + "multihead_attn." + t] = hf_sd[src + "cross_attn." + t]
        for t in ("weight", "bias"):
            out[ca + "norm." + t] = hf_sd[src + "cross_attn_layer_norm." + t]
            out[sa + "self_attn.in_proj_" + t] = torch.cat(
                [hf_sd[f"{src}self_attn.{p}_proj.{t}"] for p in ("q", "k", "v")])
            out[sa + "self_attn.out_proj." + t] = hf_sd[src + "self_attn.out_proj." + t]
            out[sa + "norm." + t] = hf_sd[src + "self_attn_layer_norm." + t]
            out[ffn + "linear1." + t] = hf_sd[src + "fc1." + t]
            out[ffn + "linear2." + t] = hf_sd[src + "fc2." + t]
            out[ffn + "norm." + t] = hf_sd[src + "final_layer_norm." + t]
    return out


def features(batch: int, h: int, w: int) -> dict[str, torch.Tensor]:
    return {k: torch.randn(batch, c, h // s, w // s) for (k, c), s in zip(SWIN_T.items(), (4, 8, 16, 32), strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("size", [(128, 192), (160, 96)])
def test_pixel_decoder_matches_transformers(size):
    hf = Mask2FormerPixelDecoder(hf_config(), feature_channels=list(SWIN_T.values())).eval()
    randomize(hf)
    ours = ENCODERS.get("m2f")(SWIN_T).eval()
    ours.load_state_dict(pixel_decoder_map(hf.state_dict()), strict=True)
    feats = features(2, *size)
    with torch.no_grad():
        ref = hf(list(feats.values()))
        got = ours(feats)
    assert (got.mask_features - ref.mask_features).abs().max() <= TOL
    assert len(got.multi_scale_features) == 3
    for g, r in zip(got.multi_scale_features, ref.multi_scale_features, strict=True):
        assert g.shape == r.shape
        assert (g - r).abs().max() <= TOL
    # the sampling offsets are non-trivial: a sanity check that the test is not vacuous
    assert ours.transformer.layers[0].self_attn.sampling_offsets.weight.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("queries,constant_masks", [(100, False), (200, False), (100, True)])
def test_transformer_decoder_matches_transformers(queries, constant_masks):
    """``constant_masks``: near-constant mask features make whole queries blocked everywhere,
    exercising the reset of fully masked rows (without it attention returns NaN)."""
    num_classes = 19
    cfg = hf_config(num_queries=queries)
    hf = Mask2FormerTransformerModule(in_features=256, config=cfg).eval()
    cls = nn.Linear(256, num_classes + 1)
    randomize(hf, 0.1)
    randomize(cls, 0.1)
    ours = DECODERS.get("m2f")(num_classes=num_classes, num_queries=queries).eval()
    ours.load_state_dict(decoder_map(hf.state_dict(), cls, 9), strict=True)
    shapes = [(3, 5), (6, 10), (12, 20)]
    multi = [torch.randn(2, 256, h, w) for h, w in shapes]
    mask_features = torch.randn(2, 256, 48, 80)
    if constant_masks:
        mask_features = 3.0 + 0.01 * mask_features
    with torch.no_grad():
        ref = hf(multi, mask_features)
        got = ours(multi, mask_features)
    ref_masks = ref.masks_queries_logits
    ref_logits = [cls(h.transpose(0, 1)) for h in ref.intermediate_hidden_states]
    got_masks = [a["pred_masks"] for a in got["aux_outputs"]] + [got["pred_masks"]]
    got_logits = [a["pred_logits"] for a in got["aux_outputs"]] + [got["pred_logits"]]
    assert len(got_masks) == len(ref_masks) == 10  # before layer 1 and after each of 9 layers
    for g, r in zip(got_masks, ref_masks, strict=True):
        assert (g - r).abs().max() <= TOL
    for g, r in zip(got_logits, ref_logits, strict=True):
        assert (g - r).abs().max() <= TOL
    # masked attention really masks: the attention masks of every step (True = blocked)
    blocked = [torch.nn.functional.interpolate(m, size=shapes[(i + 1) % 3], mode="bilinear").sigmoid() < 0.5
               for i, m in enumerate(got_masks[:-1])]
    assert any(0 < b.float().mean() < 1 for b in blocked)
    fully_blocked = any(b.flatten(2).all(-1).any().item() for b in blocked)
    assert fully_blocked == constant_masks
    assert all(torch.isfinite(m).all() for m in got_masks)
