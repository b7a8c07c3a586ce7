"""Official checkpoints: safe reading, strict name accounting, configuration inference, and a
synthesized detectron2 checkpoint built by an independent route: transformers' Mask2Former with random
weights, renamed to detectron2's names by inverting transformers' own conversion rules (never through
encbench's map), saved as .pkl and .pth, loaded into encbench: the same logits and masks."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
import torch

from bench.config import compose
from models import build_model
from models.checkpoints import (
    Checkpoint,
    CheckpointError,
    RestrictedUnpickler,
    infer_config,
    load_weights,
    read_checkpoint,
)

TOL = 1e-4


# ------------------------------------------------------------------ transformers -> detectron2 names
def hf_to_d2(hf: dict[str, torch.Tensor], decoder_layers: int) -> dict[str, torch.Tensor]:
    """transformers 5.x Mask2FormerForUniversalSegmentation names -> detectron2 names: the inverse of
    transformers' convert_mask2former_original_pytorch_checkpoint_to_pytorch rules, with transformers 5's
    Swin renames (conversion_mapping.py) undone first."""
    out: dict[str, torch.Tensor] = {}
    rest = dict(hf)

    def take(name: str) -> torch.Tensor:
        return rest.pop(name)

    enc, dec, tm = "model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.", "model.transformer_module."
    # backbone
    for k in [k for k in rest if k.startswith(enc)]:
        sub = k[len(enc):]
        if sub.endswith("num_batches_tracked"):
            take(k)  # detectron2's FrozenBN saves none
        elif sub.startswith("hidden_states_norms.stage"):
            stage, tail = re.match(r"hidden_states_norms\.stage(\d)\.(.*)", sub).groups()
            out[f"backbone.norm{int(stage) - 1}.{tail}"] = take(k)
        elif sub.startswith("swin.embeddings.patch_embeddings.projection."):
            out["backbone.patch_embed.proj." + sub.rsplit(".", 1)[1]] = take(k)
        elif sub.startswith("swin.embeddings.norm."):
            out["backbone.patch_embed.norm." + sub.rsplit(".", 1)[1]] = take(k)
        elif sub.startswith("swin.layernorm."):
            take(k)  # unused by the backbone's outputs; detectron2 has no such tensor
        elif sub.startswith("swin.encoder.layers."):
            m = re.match(r"swin\.encoder\.layers\.(\d+)\.(.*)", sub)
            layer, tail = m.groups()
            if tail.startswith("downsample."):
                out[f"backbone.layers.{layer}.{tail}"] = take(k)
                continue
            block, leaf = re.match(r"blocks\.(\d+)\.(.*)", tail).groups()
            d2 = f"backbone.layers.{layer}.blocks.{block}."
            if leaf.startswith("attention.q_proj."):
                t = leaf.rsplit(".", 1)[1]
                base = f"{enc}swin.encoder.layers.{layer}.blocks.{block}.attention."
                out[d2 + "attn.qkv." + t] = torch.cat([take(base + f"{p}_proj.{t}") for p in "qkv"])
                continue
            if leaf.startswith(("attention.k_proj.", "attention.v_proj.")):
                continue  # taken with q_proj
            leaf = (leaf.replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2.")
                    .replace("attention.o_proj.", "attn.proj.")
                    .replace("attention.relative_position_bias.relative_position_bias_table",
                             "attn.relative_position_bias_table"))
            out[d2 + leaf] = take(k)
        elif sub.startswith("embedder.embedder."):  # ResNet (transformers' MaskFormer ResNet rule, inverted)
            leaf = sub[len("embedder.embedder."):]
            out["backbone.stem.conv1." + ("weight" if leaf == "convolution.weight" else
                                          leaf.replace("normalization.", "norm."))] = take(k)
        elif sub.startswith("encoder.stages."):
            s, b, tail = re.match(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.*)", sub).groups()
            d2 = f"backbone.res{int(s) + 2}.{b}."
            if tail.startswith("shortcut."):
                leaf = tail[len("shortcut."):]
                d2 += "shortcut." + ("weight" if leaf == "convolution.weight" else
                                     leaf.replace("normalization.", "norm."))
            else:
                i, leaf = re.match(r"layer\.(\d)\.(.*)", tail).groups()
                d2 += f"conv{int(i) + 1}." + ("weight" if leaf == "convolution.weight" else
                                              leaf.replace("normalization.", "norm."))
            out[d2] = take(k)
    # pixel decoder
    pd = "sem_seg_head.pixel_decoder."
    for k in [k for k in rest if k.startswith(dec)]:
        sub = k[len(dec):]
        new = (sub.replace("adapter_1.0.", "adapter_1.").replace("adapter_1.1.", "adapter_1.norm.")
               .replace("layer_1.0.", "layer_1.").replace("layer_1.1.", "layer_1.norm.")
               .replace("input_projections.", "input_proj.").replace("mask_projection.", "mask_features."))
        if new == "level_embed":
            new = "transformer.level_embed"
        if new.startswith("encoder.layers."):
            new = ("transformer." + new).replace("self_attn_layer_norm", "norm1").replace(
                "final_layer_norm", "norm2").replace(".fc1.", ".linear1.").replace(".fc2.", ".linear2.")
        out[pd + new] = take(k)
    # transformer decoder and class predictor
    pr = "sem_seg_head.predictor."
    out[pr + "query_embed.weight"] = take(tm + "queries_embedder.weight")
    out[pr + "query_feat.weight"] = take(tm + "queries_features.weight")
    out[pr + "level_embed.weight"] = take(tm + "level_embed.weight")
    for t in ("weight", "bias"):
        out[pr + f"decoder_norm.{t}"] = take(tm + f"decoder.layernorm.{t}")
        out[pr + f"class_embed.{t}"] = take(f"class_predictor.{t}")
        for j in range(3):
            out[pr + f"mask_embed.layers.{j}.{t}"] = take(tm + f"decoder.mask_predictor.mask_embedder.{j}.0.{t}")
    for i in range(decoder_layers - 1):
        src = f"{tm}decoder.layers.{i}."
        sa, ca, ffn = (f"{pr}transformer_self_attention_layers.{i}.", f"{pr}transformer_cross_attention_layers.{i}.",
                       f"{pr}transformer_ffn_layers.{i}.")
        for t in ("weight", "bias"):
            out[sa + f"self_attn.in_proj_{t}"] = torch.cat([take(src + f"self_attn.{p}_proj.{t}") for p in "qkv"])
            out[sa + f"self_attn.out_proj.{t}"] = take(src + f"self_attn.out_proj.{t}")
            out[sa + f"norm.{t}"] = take(src + f"self_attn_layer_norm.{t}")
            out[ca + f"multihead_attn.in_proj_{t}"] = take(src + f"cross_attn.in_proj_{t}")
            out[ca + f"multihead_attn.out_proj.{t}"] = take(src + f"cross_attn.out_proj.{t}")
            out[ca + f"norm.{t}"] = take(src + f"cross_attn_layer_norm.{t}")
            out[ffn + f"linear1.{t}"] = take(src + f"fc1.{t}")
            out[ffn + f"linear2.{t}"] = take(src + f"fc2.{t}")
            out[ffn + f"norm.{t}"] = take(src + f"final_layer_norm.{t}")
    leftover = [k for k in rest if not k.startswith("criterion.")]
    assert not leftover, f"transformers tensors the inverse rules did not place: {leftover[:10]}"
    out["criterion.empty_weight"] = torch.ones(out[pr + "class_embed.bias"].shape[0])  # as official files carry
    return out


def hf_model(backbone: str) -> torch.nn.Module:
    """transformers' Mask2Former (COCO panoptic shape: 133 classes, 100 queries) with random weights."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig, SwinConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if backbone == "swin_t":
        bb = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                        drop_path_rate=0.0, out_features=stages)
    else:
        bb = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
                          layer_type="bottleneck", downsample_in_bottleneck=False, out_features=stages)
    cfg = Mask2FormerConfig(backbone_config=bb, num_labels=133, num_queries=100, feature_size=256,
                            mask_feature_size=256, hidden_dim=256, encoder_layers=6, encoder_feedforward_dim=1024,
                            num_attention_heads=8, dropout=0.0, dim_feedforward=2048, decoder_layers=10,
                            pre_norm=False, common_stride=4, feature_strides=[4, 8, 16, 32])
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():  # upstream's init zeroes the sampling offsets and attention weights: redraw all,
        for p in model.parameters():  # matrices at 1/sqrt(fan-in), so that attention is peaked, not uniform
            fan_in = p[0].numel() if p.dim() > 1 else 0
            p.copy_(torch.randn_like(p) / fan_in**0.5 if fan_in else 1 + 0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
    return model


def save_pkl(tensors: dict[str, torch.Tensor], path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in tensors.items()}, "__author__": "test"}, f)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["swin_t", "r50"])
@pytest.mark.parametrize("fmt", [".pkl", ".pth"])
def test_a_synthesized_official_checkpoint_gives_transformers_outputs(tmp_path, backbone, fmt):
    hf = hf_model(backbone)
    d2 = hf_to_d2(hf.state_dict(), decoder_layers=10)
    path = tmp_path / f"model{fmt}"
    if fmt == ".pkl":
        save_pkl(d2, path)
    else:
        torch.save({"model": {f"module.{k}": v for k, v in d2.items()}, "iteration": 1}, path)
    ckpt = read_checkpoint(path)
    inferred = infer_config(ckpt.tensors)
    assert inferred["backbone"] == backbone and inferred["encoder"] == "m2f" and inferred["input"] == "coco"
    assert inferred["backbone.decoder_queries"] == 100 and inferred["input.num_classes"] == 133
    model = build_model(compose([f"{k}={v}" for k, v in inferred.items()])).eval()
    report = load_weights(model, ckpt)
    assert report.dropped == ["criterion.empty_weight"] + (
        [k for k in sorted(d2) if k.endswith("relative_position_index")])
    assert all(k.startswith("backbone.model.swin.layernorm.") or k.endswith("num_batches_tracked")
               for k in report.missing)
    images = torch.rand(1, 3, 128, 192) * 255
    with torch.no_grad():
        ours = model(images, postprocess=False)
        theirs = hf(pixel_values=(images - model.preprocess.pixel_mean) / model.preprocess.pixel_std)
    for key, ref in (("pred_logits", theirs.class_queries_logits), ("pred_masks", theirs.masks_queries_logits)):
        assert close(ours[key], ref), (key, (ours[key] - ref).abs().max().item(), ref.abs().max().item())
    # the comparison can fail: the same file with each Swin block's q and k rows swapped, or one ResNet
    # norm's scale and shift swapped, moves the outputs far beyond the tolerance
    broken = {k: (torch.cat([v.chunk(3)[1], v.chunk(3)[0], v.chunk(3)[2]]) if k.endswith("attn.qkv.weight") else v)
              for k, v in ckpt.tensors.items()}
    if backbone == "r50":
        name = "backbone.res3.0.conv2.norm."
        broken[name + "weight"], broken[name + "bias"] = broken[name + "bias"], broken[name + "weight"]
    load_weights(model, Checkpoint(broken, ckpt.path, ckpt.format, ckpt.sha256))
    with torch.no_grad():
        assert not close(model(images, postprocess=False)["pred_masks"], theirs.masks_queries_logits)


def close(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    """Equal within TOL, relative to the reference's largest magnitude (outputs reach ~200 here)."""
    return bool((ours - ref).abs().max() <= TOL * max(1.0, ref.abs().max().item()))


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    target = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (eval, (f"__import__('pathlib').Path({str(target)!r}).write_text('x')",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": Evil()}, "__author__": "x"}))
    with pytest.raises(CheckpointError, match="refused to unpickle builtins.eval"):
        read_checkpoint(path)
    assert not target.exists()
    # the same object through torch.save: weights_only refuses it
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"w": Evil()}}, pth)
    with pytest.raises(CheckpointError, match="refused to load .* with weights_only=True"):
        read_checkpoint(pth)
    assert not target.exists()
    pickle.loads(path.read_bytes())  # noqa: S301 - unrestricted, the payload does run: what the refusal prevents
    assert target.exists()
    # numpy arrays and containers are what a model-zoo file holds, and they load
    ok = io.BytesIO(pickle.dumps({"model": {"a": np.arange(3, dtype=np.float32)}, "__author__": "x"}))
    assert RestrictedUnpickler(ok, encoding="latin1").load()["model"]["a"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("content,message", [
    ({"blobs": {"conv1_w": np.zeros((1,), np.float32)}}, "ImageNet backbone file"),
    ({"model": {"x": np.zeros(1, np.float32)}, "__author__": "x", "matching_heuristics": True}, "ImageNet backbone"),
])
def test_backbone_only_files_are_refused(tmp_path, content, message):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def synthetic_proscale(layers: list[int], lpe: bool, trc_shape: tuple | None) -> dict[str, torch.Tensor]:
    """The PRO-SCALE-specific tensors over a minimal R50 checkpoint (shapes only matter here)."""
    t: dict[str, torch.Tensor] = {"backbone.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}
    for b in range(6):
        t[f"backbone.res4.{b}.conv1.weight"] = torch.zeros(1)
    pd = "sem_seg_head.pixel_decoder."
    for i, levels in enumerate(lv for lv, n in zip((1, 2, 3), layers, strict=True) for _ in range(n)):
        t[f"{pd}transformer.encoder.layers.{i}.self_attn.sampling_offsets.weight"] = torch.zeros(64 * levels, 256)
    if trc_shape:
        t[f"{pd}transformer.encoder.token_excite.ops.weight"] = torch.zeros(trc_shape)
    if not lpe:
        t[f"{pd}layer_1.weight"] = torch.zeros(256, 256, 3, 3)
    t[f"{pd}layer_1.norm.weight"] = torch.zeros(256)
    t["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(100, 256)
    t["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(20, 256)
    for i in range(9):
        t[f"sem_seg_head.predictor.transformer_ffn_layers.{i}.linear1.weight"] = torch.zeros(1)
    return t


@pytest.mark.parametrize("layers,lpe", [([3, 3, 3], True), ([1, 1, 1], False), ([0, 2, 3], True)])
def test_the_proscale_schedule_lpe_and_trc_are_inferred(layers, lpe):
    got = infer_config(synthetic_proscale(layers, lpe, (1, 256)))
    assert got["backbone"] == "r50" and got["encoder"] == "proscale" and got["encoder.layers"] == layers
    assert got["encoder.lpe"] is lpe and got["encoder.trc"] == "faithful"
    assert got["input"] == "cityscapes" and got["input.num_classes"] == 19 and got["decoder.dec_layers"] == 9


def test_conv_trc_and_deeplab_stems_are_refused():
    with pytest.raises(CheckpointError, match="convolutional TRC"):
        infer_config(synthetic_proscale([3, 3, 3], True, (1, 256, 1, 1)))
    t = synthetic_proscale([3, 3, 3], True, (1, 256))
    t["backbone.stem.conv2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="DeepLab stem"):
        infer_config(t)


@pytest.mark.slow
def test_a_wrong_shape_or_class_count_names_the_key_and_both_shapes(tmp_path):
    hf = hf_model("r50")
    d2 = hf_to_d2(hf.state_dict(), decoder_layers=10)
    save_pkl(d2, tmp_path / "m.pkl")
    ckpt = read_checkpoint(tmp_path / "m.pkl")
    wrong = build_model(compose(["backbone=r50", "input=cityscapes"])).eval()  # 19 classes, not 133
    with pytest.raises(CheckpointError, match=r"transformer_decoder\.class_embed\.weight: checkpoint \(134, 256\) "
                                              r"vs model \(20, 256\)"):
        load_weights(wrong, ckpt)
    ckpt.tensors["sem_seg_head.pixel_decoder.unknown.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="match no detectron2 name rule"):
        load_weights(build_model(compose(["backbone=r50", "input=coco"])), ckpt)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,fmt", [("swin_t", ".safetensors"), ("r50", ".pth")])
def test_a_transformers_state_dict_loads_and_gives_transformers_outputs(tmp_path, backbone, fmt):
    hf = hf_model(backbone)
    path = tmp_path / f"model{fmt}"
    if fmt == ".safetensors":
        hf.save_pretrained(tmp_path, safe_serialization=True)
    else:
        torch.save(hf.state_dict(), path)
    ckpt = read_checkpoint(path)
    assert ckpt.format.startswith("transformers Mask2FormerForUniversalSegmentation")
    # the same detectron2 names and tensors as the independent inverse of transformers' rules (above)
    ref = {k: v for k, v in hf_to_d2(hf.state_dict(), decoder_layers=10).items() if not k.startswith("criterion.")}
    assert sorted(k for k in ckpt.tensors if not k.startswith("criterion.")) == sorted(ref)
    assert all(torch.equal(ckpt.tensors[k], v) for k, v in ref.items())
    inferred = infer_config(ckpt.tensors)
    assert inferred["backbone"] == backbone and inferred["input.num_classes"] == 133
    model = build_model(compose([f"{k}={v}" for k, v in inferred.items()])).eval()
    load_weights(model, ckpt)
    images = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        ours = model(images, postprocess=False)
        theirs = hf(pixel_values=(images - model.preprocess.pixel_mean) / model.preprocess.pixel_std)
    assert close(ours["pred_logits"], theirs.class_queries_logits)
    assert close(ours["pred_masks"], theirs.masks_queries_logits)


def test_a_transformers_tensor_no_rule_places_is_named():
    from models.hf_names import transformers_to_d2

    with pytest.raises(CheckpointError, match=r"1 transformers tensor\(s\) match no rule, e.g. \['model.extra.w'\]"):
        transformers_to_d2({"model.pixel_level_module.encoder.embedder.embedder.convolution.weight": torch.zeros(1),
                            "model.extra.w": torch.zeros(1)})
