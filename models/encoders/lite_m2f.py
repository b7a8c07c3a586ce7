"""Lite-M2F: Lite-DETR's interleaved encoder on Mask2Former's three levels, docs/models.md §3.1-3.4.

The first ``high_levels`` levels in M2F's order (stride 32, then 16) are "high-level" tokens, a
prefix of the token sequence. Each of ``blocks`` blocks has ``layers_per_block - 1`` H layers
(queries: high-level tokens only; values: all tokens) and one F layer (queries: all tokens), in
which low-level tokens use a small C->C->C FFN when ``small_ffn``. ``kda`` swaps MSDA for
key-aware deformable attention. As in Lite-DETR's code, every attention module owns a
``query_proj`` linear, unused without KDA (a parameter-count trap kept for faithfulness).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import ENCODERS
from models.encoders.analytic import F_ENC, NORM, C, Tokens, deform_layer, msda_query_macs
from models.encoders.base import PixelDecoder, PixelEmbedding, flatten_levels, reference_points, split_levels
from models.encoders.m2f import MSDeformEncoder
from models.layers import MSDeformAttn, MSDeformEncoderLayer
from models.layers.ms_deform_attn import sampling_locations
from models.ops.msda import msda_sample


class KeyAwareDeformAttn(MSDeformAttn):
    """KDA (docs/models.md §3.2): weights = softmax_{L*P}(<q_m, sampled K_m> / sqrt(D)), K = V sampled again.

    Pure PyTorch, as upstream (no kernel): keys and values are sampled by two grid_sample passes.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__(d_model, n_levels, n_heads, n_points)
        del self.attention_weights  # the learned weights linear does not exist with key_aware=True
        self.query_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.query_proj.weight)
        nn.init.constant_(self.query_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, lq, c = query.shape
        m, lvl, p, d = self.n_heads, self.n_levels, self.n_points, c // self.n_heads
        s = input_flatten.shape[1]
        if len(spatial_shapes) != lvl or sum(h * w for h, w in spatial_shapes) != s:
            raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not match {lvl} levels / {s} tokens")
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, m, d)
        offsets = self.sampling_offsets(query).view(n, lq, m, lvl, p, 2)
        locations = sampling_locations(reference_points, offsets, spatial_shapes)
        keys = msda_sample(value, spatial_shapes, locations)      # (N*M, D, Lq, L*P)
        values = msda_sample(value, spatial_shapes, locations)    # sampled again, as upstream
        q = self.query_proj(query).view(n, lq, m, d).permute(0, 2, 3, 1).reshape(n * m, d, lq, 1)
        weights = F.softmax((q * keys).sum(1, keepdim=True) / math.sqrt(d), dim=-1)  # (N*M, 1, Lq, L*P)
        out = (values * weights).sum(-1).view(n, m * d, lq).transpose(1, 2)
        return self.output_proj(out)


class LiteEncoderLayer(MSDeformEncoderLayer):
    """A post-norm deformable layer whose queries are the first ``n_query`` tokens (H) or all (F)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, n_heads: int, n_points: int, kda: bool,
                 full_update: bool, small_ffn: bool, msda_backend: str) -> None:
        super().__init__(d_model, ffn_dim, dropout, 3, n_heads, n_points, msda_backend)
        if kda:
            self.self_attn = KeyAwareDeformAttn(d_model, 3, n_heads, n_points)
        else:  # instantiated but unused, as in Lite-DETR's MSDeformAttn
            self.self_attn.add_module("query_proj", nn.Linear(d_model, d_model))
        self.full_update = full_update
        self.small_ffn = None
        if full_update and small_ffn:
            self.small_ffn = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout),
                                           nn.Linear(d_model, d_model))
            self.small_norm = nn.LayerNorm(d_model)

    def forward_lite(self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                     shapes: Sequence[tuple[int, int]], n_high: int) -> torch.Tensor:
        n_query = src.shape[1] if self.full_update else n_high
        q = src[:, :n_query]
        q2 = self.self_attn(q + pos[:, :n_query], ref[:, :n_query], src, shapes)
        q = self.norm1(q + self.dropout1(q2))
        if self.small_ffn is None:
            q = self.forward_ffn(q)
        else:  # high-level tokens: the normal FFN; low-level tokens: the small one
            low = q[:, n_high:]
            low = self.small_norm(low + self.small_ffn(low))
            q = torch.cat([self.forward_ffn(q[:, :n_high]), low], dim=1)
        return q if self.full_update else torch.cat([q, src[:, n_query:]], dim=1)


class LiteEncoder(MSDeformEncoder):
    """M2F's projections and encodings with Lite-DETR's [H x (A-1), F] x B schedule."""

    def __init__(self, in_channels: Mapping[str, int], high_levels: int = 2, blocks: int = 3,
                 layers_per_block: int = 2, kda: bool = False, small_ffn: bool = True, d_model: int = 256,
                 ffn_dim: int = 1024, n_heads: int = 8, n_points: int = 4, dropout: float = 0.0,
                 msda_backend: str = "pytorch") -> None:
        super().__init__(in_channels, d_model, 0, ffn_dim, n_heads, n_points, dropout, msda_backend)
        self.high_levels = high_levels
        self.layers = nn.ModuleList(
            LiteEncoderLayer(d_model, ffn_dim, dropout, n_heads, n_points, kda, (i + 1) % layers_per_block == 0,
                             small_ffn, msda_backend)
            for i in range(blocks * layers_per_block))

    def forward(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        srcs, pos = self.embed(features)
        src, shapes = flatten_levels(srcs)
        pos_flat, _ = flatten_levels(pos)
        ref = reference_points(shapes, 3, src.shape[0], src.device, src.dtype)
        n_high = sum(h * w for h, w in shapes[: self.high_levels])  # high-level tokens lead (low-res first)
        for layer in self.layers:
            src = layer.forward_lite(src, pos_flat, ref, shapes, n_high)
        return split_levels(src, shapes)


@ENCODERS.register("lite_m2f")
class LiteM2FPixelDecoder(PixelDecoder):
    """Lite-M2F pixel decoder: ``high_levels`` (1|2), ``blocks``, ``layers_per_block``, ``kda``, ``small_ffn``."""

    @staticmethod
    def analytic_layers(tokens: Tokens, high_levels: int = 2, blocks: int = 3, layers_per_block: int = 2,
                        kda: bool = False, small_ffn: bool = True, **_: Any) -> tuple[int, int]:
        """Per block: H layers (high-level queries, all values), then one F layer over every token."""
        t = tokens
        n_high = t.n32 + (t.n16 if high_levels == 2 else 0)
        n_low = t.n - n_high
        h_f, h_n = deform_layer(n_high, t.n, 3, kda=kda)
        attn_all = t.n * C * C + t.n * msda_query_macs(3, kda)
        if small_ffn:
            f_f = attn_all + n_high * 2 * C * F_ENC + n_low * 2 * C * C
            f_n = NORM * C * (t.n + n_high + n_low)  # norm1 on all, norm2 on high, small norm on low
        else:
            f_f, f_n = deform_layer(t.n, t.n, 3, kda=kda)
        return blocks * ((layers_per_block - 1) * h_f + f_f), blocks * ((layers_per_block - 1) * h_n + f_n)

    @staticmethod
    def variant_label(options: Mapping[str, Any]) -> str:
        label = f"lite_m2f(h{options['high_levels']},{options['blocks']}x{options['layers_per_block']})"
        return label + ("+kda" if options["kda"] else "") + ("" if options["small_ffn"] else "+fullffn")

    def __init__(self, in_channels: Mapping[str, int], high_levels: int = 2, blocks: int = 3,
                 layers_per_block: int = 2, kda: bool = False, small_ffn: bool = True, d_model: int = 256,
                 mask_dim: int = 256, ffn_dim: int = 1024, n_heads: int = 8, n_points: int = 4,
                 dropout: float = 0.0, msda_backend: str = "pytorch", force_fp32: bool = True) -> None:
        super().__init__(in_channels, force_fp32)
        if high_levels not in (1, 2):
            raise ValueError(f"encoder.high_levels must be 1 or 2 (of the 3 levels), got {high_levels}")
        if blocks < 1 or layers_per_block < 1:
            raise ValueError(f"encoder.blocks and encoder.layers_per_block must be >= 1, got {blocks}, "
                             f"{layers_per_block}")
        self.transformer = LiteEncoder(self.in_channels, high_levels, blocks, layers_per_block, kda, small_ffn,
                                       d_model, ffn_dim, n_heads, n_points, dropout, msda_backend)
        self.pixel_embedding = PixelEmbedding(self.in_channels["res2"], d_model, mask_dim)
