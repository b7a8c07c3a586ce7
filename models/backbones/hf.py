"""ResNet and Swin backbones built from ``transformers`` configs.

``SwinBackbone`` already carries Mask2Former's LayerNorm per output level
(``hidden_states_norms``) and pads each stage to the window size internally, like
Mask2Former's D2SwinTransformer. ``ResNetBackbone`` uses the stride-in-3x3 bottleneck
(detectron2's ``STRIDE_IN_1X1: False``, used by Mask2Former's torchvision-initialised R50).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ResNetBackbone, ResNetConfig, SwinBackbone, SwinConfig

from models.backbones import BACKBONES

OUT_NAMES = ("res2", "res3", "res4", "res5")
STAGES = ["stage1", "stage2", "stage3", "stage4"]


class HFBackbone(nn.Module):
    """Wraps a transformers backbone: returns {res2..res5} and checks the input."""

    size_divisibility = 32

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.out_channels = dict(zip(OUT_NAMES, model.channels, strict=True))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone {self.name!r} expects images (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_divisibility or w % self.size_divisibility:
            raise ValueError(
                f"backbone input must be padded to a multiple of {self.size_divisibility}, got {h}x{w} "
                "(the segmentor pads for you)"
            )
        maps = self.model(pixel_values=images).feature_maps
        return dict(zip(OUT_NAMES, maps, strict=True))


def _resnet(name: str, depths: list[int]) -> HFBackbone:
    cfg = ResNetConfig(depths=depths, hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
                       layer_type="bottleneck", downsample_in_bottleneck=False, out_features=STAGES)
    return HFBackbone(ResNetBackbone(cfg).eval(), name)


def _swin(name: str, embed_dim: int, depths: list[int], heads: list[int], window: int) -> HFBackbone:
    cfg = SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
                     drop_path_rate=0.3, out_features=STAGES)
    return HFBackbone(SwinBackbone(cfg).eval(), name)


@BACKBONES.register("r50")
def r50() -> HFBackbone:
    """ResNet-50 (channels 256/512/1024/2048)."""
    return _resnet("r50", [3, 4, 6, 3])


@BACKBONES.register("r101")
def r101() -> HFBackbone:
    """ResNet-101."""
    return _resnet("r101", [3, 4, 23, 3])


@BACKBONES.register("swin_t")
def swin_t() -> HFBackbone:
    """Swin-T, window 7 (channels 96/192/384/768)."""
    return _swin("swin_t", 96, [2, 2, 6, 2], [3, 6, 12, 24], 7)


@BACKBONES.register("swin_s")
def swin_s() -> HFBackbone:
    """Swin-S, window 7."""
    return _swin("swin_s", 96, [2, 2, 18, 2], [3, 6, 12, 24], 7)


@BACKBONES.register("swin_b")
def swin_b() -> HFBackbone:
    """Swin-B (384 pre-training), window 12 (channels 128/256/512/1024)."""
    return _swin("swin_b", 128, [2, 2, 18, 2], [4, 8, 16, 32], 12)


@BACKBONES.register("swin_l")
def swin_l() -> HFBackbone:
    """Swin-L (IN-22k 384), window 12 (channels 192/384/768/1536)."""
    return _swin("swin_l", 192, [2, 2, 18, 2], [6, 12, 24, 48], 12)
