"""Sine positional encoding of a feature map (DETR / Mask2Former ``PositionEmbeddingSine``)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine encoding with ``num_pos_feats`` features per axis, y half first.

    With ``normalize`` the 1-based row/column index is divided by its last value (eps 1e-6)
    and scaled by 2*pi, as Mask2Former does (no -0.5 offset). Depends only on the map's shape.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding (B, 2*num_pos_feats, H, W) for a map ``x`` of shape (B, C, H, W), in fp32."""
        b, _, h, w = x.shape
        kw = {"dtype": torch.float32, "device": x.device}
        # arange == cumsum of an all-valid mask (Mask2Former never pads inside the pixel decoder)
        y_embed = torch.arange(1, h + 1, **kw)[None, :, None].expand(b, h, w)
        x_embed = torch.arange(1, w + 1, **kw)[None, None, :].expand(b, h, w)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, **kw)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
