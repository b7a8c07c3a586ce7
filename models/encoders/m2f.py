"""Mask2Former's MSDeformAttn pixel decoder (M2F), docs/models.md §1.1.

Input projections (1x1 conv + GN) of res5, res4, res3; sine positional encoding plus a learned
level embedding; ``num_layers`` post-norm deformable layers (FFN 1024) where every token of the
three levels queries all three levels; split back per level; the stride-4 branch on res2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.encoders import ENCODERS
from models.encoders.analytic import Tokens, deform_layer
from models.encoders.base import (
    TRANSFORMER_LEVELS,
    PixelDecoder,
    PixelEmbedding,
    flatten_levels,
    input_projection,
    reference_points,
    split_levels,
)
from models.layers import MSDeformEncoderLayer, PositionEmbeddingSine

TRC_PREFIX = "sem_seg_head.pixel_decoder.transformer.encoder.token_excite."  # PRO-SCALE's TRC gate


class MSDeformEncoder(nn.Module):
    """Input projections + positional/level encodings + deformable layers over 3 levels."""

    def __init__(self, in_channels: Mapping[str, int], d_model: int = 256, num_layers: int = 6,
                 ffn_dim: int = 1024, n_heads: int = 8, n_points: int = 4, dropout: float = 0.0,
                 msda_backend: str = "pytorch") -> None:
        super().__init__()
        self.levels = TRANSFORMER_LEVELS
        self.input_proj = nn.ModuleList(input_projection(in_channels[k], d_model) for k in self.levels)
        self.pe_layer = PositionEmbeddingSine(d_model // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.empty(len(self.levels), d_model))
        nn.init.normal_(self.level_embed)
        self.layers = nn.ModuleList(
            MSDeformEncoderLayer(d_model, ffn_dim, dropout, len(self.levels), n_heads, n_points, msda_backend)
            for _ in range(num_layers)
        )

    def embed(self, features: Mapping[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Projected maps and their positional (+ level) encodings, in ``self.levels`` order."""
        srcs = [proj(features[k]) for proj, k in zip(self.input_proj, self.levels, strict=True)]
        pos = [self.pe_layer(features[k]) + self.level_embed[i].view(1, -1, 1, 1)
               for i, k in enumerate(self.levels)]
        return srcs, pos

    def forward(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        srcs, pos = self.embed(features)
        src, shapes = flatten_levels(srcs)
        pos_flat, _ = flatten_levels(pos)
        ref = reference_points(shapes, len(shapes), src.shape[0], src.device, src.dtype)
        for layer in self.layers:
            src = layer(src, pos_flat, ref, shapes)
        return split_levels(src, shapes)


@ENCODERS.register("m2f")
class M2FPixelDecoder(PixelDecoder):
    """The baseline MSDeformAttn pixel decoder."""

    @staticmethod
    def analytic_layers(tokens: Tokens, num_layers: int = 6, **_: Any) -> tuple[int, int]:
        """``num_layers`` 3-level layers over all tokens."""
        f, n = deform_layer(tokens.n, tokens.n, 3)
        return num_layers * f, num_layers * n

    @staticmethod
    def variant_label(options: Mapping[str, Any]) -> str | None:
        return f"m2f({options['num_layers']})" if options["num_layers"] != 6 else None  # 6: the published depth

    checkpoint_rules = (  # Mask2Former's MSDeformAttnPixelDecoder (sem_seg_head.pixel_decoder.*)
        (r"^sem_seg_head\.pixel_decoder\.input_proj\.(\d)\.([01])\.(weight|bias)$",
         r"pixel_decoder.transformer.input_proj.\1.\2.\3"),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", r"pixel_decoder.transformer.level_embed"),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(.*)$",
         r"pixel_decoder.transformer.layers.\1.\2"),
        (r"^sem_seg_head\.pixel_decoder\.adapter_1\.weight$", r"pixel_decoder.pixel_embedding.lateral_conv.0.weight"),
        (r"^sem_seg_head\.pixel_decoder\.adapter_1\.norm\.(weight|bias)$",
         r"pixel_decoder.pixel_embedding.lateral_conv.1.\1"),
        (r"^sem_seg_head\.pixel_decoder\.layer_1\.weight$", r"pixel_decoder.pixel_embedding.output_conv.0.weight"),
        (r"^sem_seg_head\.pixel_decoder\.layer_1\.norm\.(weight|bias)$",
         r"pixel_decoder.pixel_embedding.output_conv.1.\1"),
        (r"^sem_seg_head\.pixel_decoder\.mask_features\.(weight|bias)$",
         r"pixel_decoder.pixel_embedding.mask_features.\1"),
    )

    @staticmethod
    def from_checkpoint(levels: list[int], names: set[str]) -> dict[str, Any] | None:
        """Every layer over all 3 levels, the stride-4 conv, no TRC: M2F with that many layers."""
        trc = any(n.startswith(TRC_PREFIX) for n in names)
        if trc or "sem_seg_head.pixel_decoder.layer_1.weight" not in names or any(v != 3 for v in levels):
            return None
        return {"encoder": "m2f", "encoder.num_layers": len(levels)}

    def __init__(self, in_channels: Mapping[str, int], d_model: int = 256, mask_dim: int = 256,
                 num_layers: int = 6, ffn_dim: int = 1024, n_heads: int = 8, n_points: int = 4,
                 dropout: float = 0.0, msda_backend: str = "pytorch", force_fp32: bool = True) -> None:
        super().__init__(in_channels, force_fp32)
        if num_layers < 1:
            raise ValueError(f"encoder.num_layers must be >= 1, got {num_layers}")
        self.transformer = MSDeformEncoder(self.in_channels, d_model, num_layers, ffn_dim, n_heads, n_points,
                                           dropout, msda_backend)
        self.pixel_embedding = PixelEmbedding(self.in_channels["res2"], d_model, mask_dim)

