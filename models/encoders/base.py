"""Pieces every pixel decoder shares (docs/models.md §1.1) and the PixelDecoder base class.

A pixel decoder maps backbone features {res2..res5} to (mask_features at stride 4,
transformer_encoder_features = stride-32 map, multi_scale_features = [s32, s16, s8]). It has
two sub-stages the harness measures separately: ``transformer`` (input projections and the
encoder layers: stage ``pixel_decoder_layers``) and ``pixel_embedding`` (the stride-4 branch and
the mask-feature projection: stage ``pixel_embedding``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

LEVELS = ("res2", "res3", "res4", "res5")
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
TRANSFORMER_LEVELS = ("res5", "res4", "res3")  # the M2F family orders levels low resolution first


class PixelDecoderOutput(NamedTuple):
    mask_features: torch.Tensor
    transformer_encoder_features: torch.Tensor
    multi_scale_features: tuple[torch.Tensor, ...]


def c2_xavier_fill(module: nn.Conv2d | nn.Linear) -> None:
    """detectron2's ``c2_xavier_fill``: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def input_projection(in_channels: int, d_model: int = 256) -> nn.Sequential:
    """1x1 conv (with bias, xavier init) + GroupNorm(32), no activation."""
    conv = nn.Conv2d(in_channels, d_model, kernel_size=1)
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.constant_(conv.bias, 0)
    return nn.Sequential(conv, nn.GroupNorm(32, d_model))


def flatten_levels(maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(B, C, H_l, W_l) maps -> tokens (B, sum H_l*W_l, C) and the list of (H_l, W_l)."""
    shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1), shapes


def split_levels(tokens: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_levels`: tokens (B, S, C) -> list of (B, C, H_l, W_l)."""
    b = tokens.shape[0]
    parts = tokens.split([h * w for h, w in shapes], dim=1)
    return [z.transpose(1, 2).reshape(b, -1, h, w) for z, (h, w) in zip(parts, shapes, strict=True)]


def reference_points(shapes: Sequence[tuple[int, int]], n_levels: int, batch: int,
                     device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel centres ((j+0.5)/W, (i+0.5)/H) of every token, the same point on all ``n_levels`` levels.

    Returns (B, S, n_levels, 2) in (x, y) order (all valid ratios are 1: no padding masks).
    """
    refs = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device),
            indexing="ij",
        )
        refs.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
    ref = torch.cat(refs, 0)[None, :, None, :]
    return ref.expand(batch, -1, n_levels, -1)


class PixelEmbedding(nn.Module):
    """The stride-4 branch and mask features (docs/models.md §1, step 8-9).

    y = output_conv(lateral_conv(res2) + bilinear_up(finest)); mask_features = 1x1 conv(y).
    ``output_conv`` is a bias-free 3x3 conv + GN(32) + ReLU; PRO-SCALE's LPE swaps it for a
    max-pool (see :func:`models.encoders.proscale`).
    """

    def __init__(self, in_channels: int, conv_dim: int = 256, mask_dim: int = 256,
                 output_conv: nn.Module | None = None) -> None:
        super().__init__()
        lateral = nn.Conv2d(in_channels, conv_dim, kernel_size=1, bias=False)
        c2_xavier_fill(lateral)
        self.lateral_conv = nn.Sequential(lateral, nn.GroupNorm(32, conv_dim))
        if output_conv is None:
            conv = nn.Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=False)
            c2_xavier_fill(conv)
            output_conv = nn.Sequential(conv, nn.GroupNorm(32, conv_dim), nn.ReLU())
        self.output_conv = output_conv
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, res2: torch.Tensor, finest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mask_features, y) at stride 4."""
        cur = self.lateral_conv(res2)
        # upstream's comment says "nearest", the call is bilinear
        y = cur + nn.functional.interpolate(finest, size=cur.shape[-2:], mode="bilinear", align_corners=False)
        y = self.output_conv(y)
        return self.mask_features(y), y


class PixelDecoder(nn.Module):
    """Base class: validates inputs, runs ``transformer`` then ``pixel_embedding`` in fp32.

    Subclasses set ``self.transformer`` (features dict -> [s32, s16, s8] maps) and
    ``self.pixel_embedding``. ``force_fp32`` (default, as upstream) disables autocast inside and
    casts the features to float32.
    """

    transformer: nn.Module
    pixel_embedding: PixelEmbedding
    analytic_input_norm: ClassVar[bool] = True  # input projections carry a GroupNorm (RT-M2F: BatchNorm, 0 MACs)

    @staticmethod
    def analytic_layers(tokens: Any, **options: Any) -> tuple[int, int] | None:
        """(formula MACs, norm and other MACs) of the encoder layers for ``tokens`` (an ``analytic.Tokens``),
        or None: no analytic model (the analytic columns are then NaN)."""
        return None

    @staticmethod
    def variant_label(options: Mapping[str, Any]) -> str | None:
        """A short label of this configuration (``proscale(3,3,3)+lpe+trc``); None: the registered name.
        ``options`` holds every knob: the config's, and the builder's defaults for the rest."""
        return None

    # this pixel decoder's tensors in an official (detectron2) checkpoint: (name pattern, encbench name) rules
    checkpoint_rules: ClassVar[tuple[tuple[str, str], ...]] = ()

    @staticmethod
    def from_checkpoint(levels: list[int], names: set[str]) -> dict[str, Any] | None:
        """The overrides that build this pixel decoder from an official checkpoint, given the level count of
        each of its deformable layers and its tensor names; None: the checkpoint is not of this kind."""
        return None

    def __init__(self, in_channels: Mapping[str, int], force_fp32: bool = True) -> None:
        super().__init__()
        missing = [k for k in LEVELS if k not in in_channels]
        if missing:
            raise ValueError(f"pixel decoder needs input channels for {list(LEVELS)}; missing {missing}")
        self.in_channels = {k: int(in_channels[k]) for k in LEVELS}
        self.force_fp32 = force_fp32

    def check_features(self, features: Mapping[str, torch.Tensor]) -> None:
        for k, c in self.in_channels.items():
            if k not in features:
                raise ValueError(f"missing backbone feature {k!r}; got {sorted(features)}")
            if features[k].dim() != 4 or features[k].shape[1] != c:
                raise ValueError(
                    f"backbone feature {k!r} must be (B, {c}, H, W), got {tuple(features[k].shape)}"
                )

    def forward(self, features: Mapping[str, torch.Tensor]) -> PixelDecoderOutput:
        self.check_features(features)
        device_type = features["res2"].device.type
        if not self.force_fp32 or not torch.amp.is_autocast_available(device_type):  # e.g. meta: shapes only
            return self._forward(features)
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward({k: v.float() for k, v in features.items()})

    def _forward(self, features: Mapping[str, torch.Tensor]) -> PixelDecoderOutput:
        multi_scale = list(self.transformer(features))
        mask_features, _ = self.pixel_embedding(features["res2"], multi_scale[-1])
        return PixelDecoderOutput(mask_features, multi_scale[0], tuple(multi_scale[:3]))
