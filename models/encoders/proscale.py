"""PRO-SCALE (Aich et al., ICLR 2025): progressive token length scaling, docs/models.md §5.1-5.4.

Phase P1 runs ``layers[0]`` 1-level deformable layers on the stride-32 tokens only; P2 appends
the input-projected stride-16 tokens and runs ``layers[1]`` 2-level layers; P3 appends the
input-projected stride-8 tokens and runs ``layers[2]`` M2F layers over all three levels. All
layers are independent. TRC (one shared gate) recalibrates the stride-32 and stride-16 tokens,
guided by the input-projected stride-8 tokens; LPE replaces the stride-4 3x3 conv by a max-pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import ENCODERS
from models.encoders.analytic import C, Tokens, deform_layer
from models.encoders.base import PixelDecoder, PixelEmbedding, flatten_levels, reference_points, split_levels
from models.encoders.m2f import TRC_PREFIX, M2FPixelDecoder, MSDeformEncoder
from models.layers import MSDeformEncoderLayer

TRC_MODES = ("faithful", "fixed", "off")
TrcMode = Literal["faithful", "fixed", "off"]


class TRC(nn.Module):
    """Token recalibration: tokens * sigmoid(tau * Linear(resized guide)), one gate per token.

    ``faithful`` reproduces the official code's memory reinterpretation: the (B, L, C) guide is
    viewed as (B, C, H, W) without a transpose, resized, and viewed back without one. ``fixed``
    transposes to a true feature map and back.
    """

    def __init__(self, d_model: int = 256, temperature: float = 0.1, layout: str = "faithful") -> None:
        super().__init__()
        if layout not in ("faithful", "fixed"):
            raise ValueError(f"TRC layout must be 'faithful' or 'fixed', got {layout!r}")
        self.linear = nn.Linear(d_model, 1)
        self.temperature = temperature
        self.layout = layout

    def resize_guide(self, guide: torch.Tensor, guide_hw: tuple[int, int], target_hw: tuple[int, int]
                     ) -> torch.Tensor:
        """Guide tokens (B, L_g, C) -> (B, L_t, C) at the target map size."""
        b, _, c = guide.shape
        if self.layout == "faithful":
            g = guide.reshape(b, c, *guide_hw)  # == upstream .view: tokens read as channels
            g = F.interpolate(g, size=target_hw, mode="bilinear", align_corners=False)
            return g.reshape(b, target_hw[0] * target_hw[1], c)
        g = guide.transpose(1, 2).reshape(b, c, *guide_hw)
        g = F.interpolate(g, size=target_hw, mode="bilinear", align_corners=False)
        return g.flatten(2).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, target_hw: tuple[int, int], guide: torch.Tensor,
                guide_hw: tuple[int, int]) -> torch.Tensor:
        gate = torch.sigmoid(self.temperature * self.linear(self.resize_guide(guide, guide_hw, target_hw)))
        return tokens * gate


def light_pixel_embedding(conv_dim: int = 256) -> nn.Sequential:
    """Light pixel embedding: MaxPool2d(3, stride 1, pad 1) + GroupNorm(32) + ReLU (no parameters but GN)."""
    return nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.GroupNorm(32, conv_dim), nn.ReLU())


class ProScaleEncoder(MSDeformEncoder):
    """M2F's projections and encodings with a progressive (P1, P2, P3) layer schedule."""

    def __init__(self, in_channels: Mapping[str, int], layers: Sequence[int], d_model: int = 256,
                 ffn_dim: int = 1024, n_heads: int = 8, n_points: int = 4, dropout: float = 0.0,
                 msda_backend: str = "pytorch", trc: str = "faithful", trc_temperature: float = 0.1,
                 residual: bool = False) -> None:
        super().__init__(in_channels, d_model, 0, ffn_dim, n_heads, n_points, dropout, msda_backend)
        self.phase_levels = [lvl for lvl, n in zip((1, 2, 3), layers, strict=True) for _ in range(n)]
        self.layers = nn.ModuleList(
            MSDeformEncoderLayer(d_model, ffn_dim, dropout, lvl, n_heads, n_points, msda_backend)
            for lvl in self.phase_levels)
        self.schedule = tuple(int(n) for n in layers)
        self.trc = None if trc == "off" else TRC(d_model, trc_temperature, trc)
        self.residual = residual

    def forward(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        srcs, pos = self.embed(features)  # [res5, res4, res3]
        tokens = [m.flatten(2).transpose(1, 2) for m in srcs]
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in srcs]
        pos_flat, _ = flatten_levels(pos)
        ref = reference_points(shapes, 3, tokens[0].shape[0], tokens[0].device, tokens[0].dtype)
        if self.trc is not None:  # one shared gate, guided by the input-projected stride-8 tokens
            tokens[0] = self.trc(tokens[0], shapes[0], tokens[2], shapes[2])
            tokens[1] = self.trc(tokens[1], shapes[1], tokens[2], shapes[2])
        src = tokens[0]
        layer_iter = iter(self.layers)
        for phase, n_layers in enumerate(self.schedule):
            if phase > 0:
                src = torch.cat([src, tokens[phase]], dim=1)
            n_lv = phase + 1
            n_tok = src.shape[1]
            # as the official code: the skip is the encoder's input tokens of the phase's levels (after TRC),
            # so after a P2 layer its res5 part is P1's input, not P1's output
            skip = torch.cat(tokens[:n_lv], dim=1) if self.residual and phase < 2 else None
            for _ in range(n_layers):
                layer = next(layer_iter)
                src = layer(src, pos_flat[:, :n_tok], ref[:, :n_tok, :n_lv], shapes[:n_lv])
                if skip is not None:
                    src = src + skip
        return split_levels(src, shapes)


@ENCODERS.register("proscale")
class ProScalePixelDecoder(PixelDecoder):
    """PRO-SCALE pixel decoder: ``layers=[p1, p2, p3]``, ``lpe``, ``trc`` (faithful | fixed | off)."""

    @staticmethod
    def analytic_layers(tokens: Tokens, layers: Sequence[int] = (3, 3, 3), trc: str = "faithful", **_: Any
                        ) -> tuple[int, int]:
        """P1 layers on the s32 tokens (1 level), P2 on s32+s16 (2), P3 on all (3); TRC's gate and resize."""
        t, f, n = tokens, 0, 0
        for count, (n_tok, levels) in zip(layers, ((t.n32, 1), (t.n32 + t.n16, 2), (t.n, 3)), strict=True):
            lf, ln = deform_layer(n_tok, n_tok, levels)
            f, n = f + count * lf, n + count * ln
        trc_macs = 0 if trc == "off" else (t.n32 + t.n16) * (C + 4 * C)  # gate linear + resized guide
        return f, n + trc_macs

    @staticmethod
    def variant_label(options: Mapping[str, Any]) -> str:
        label = "proscale(" + ",".join(str(n) for n in options["layers"]) + ")"
        label += "+lpe" if options["lpe"] else ""
        label += {"faithful": "+trc", "fixed": "+trc_fixed", "off": ""}[options["trc"]]
        return label + ("+res" if options["residual"] else "")

    # the released code keeps M2F's names and adds the TRC gate (a Linear: token_excite.ops)
    checkpoint_rules = M2FPixelDecoder.checkpoint_rules + (
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.token_excite\.ops\.(weight|bias)$",
         r"pixel_decoder.transformer.trc.linear.\1"),)

    @staticmethod
    def from_checkpoint(levels: list[int], names: set[str]) -> dict[str, Any] | None:
        """Layers over 1, then 2, then 3 levels (the schedule), LPE when the stride-4 conv is absent, TRC when
        its gate is present (the released, faithful layout)."""
        if levels != sorted(levels) or not set(levels) <= {1, 2, 3} or M2FPixelDecoder.from_checkpoint(levels, names):
            return None  # (an M2F checkpoint is M2F's)
        return {"encoder": "proscale", "encoder.layers": [levels.count(k) for k in (1, 2, 3)],
                "encoder.lpe": "sem_seg_head.pixel_decoder.layer_1.weight" not in names,
                "encoder.trc": "faithful" if any(n.startswith(TRC_PREFIX) for n in names) else "off"}

    def __init__(self, in_channels: Mapping[str, int], layers: Sequence[int] = (3, 3, 3), lpe: bool = True,
                 trc: TrcMode = "faithful", residual: bool = False, trc_temperature: float = 0.1,
                 d_model: int = 256, mask_dim: int = 256, ffn_dim: int = 1024, n_heads: int = 8,
                 n_points: int = 4, dropout: float = 0.0, msda_backend: str = "pytorch",
                 force_fp32: bool = True) -> None:
        super().__init__(in_channels, force_fp32)
        layers = list(layers)
        if len(layers) != 3 or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in layers):
            raise ValueError(f"encoder.layers must be three non-negative integers [p1, p2, p3], got {layers}")
        if sum(layers) < 1:
            raise ValueError(f"encoder.layers must have at least one layer in total, got {layers}")
        if trc not in TRC_MODES:
            raise ValueError(f"encoder.trc must be one of {list(TRC_MODES)}, got {trc!r}")
        self.transformer = ProScaleEncoder(self.in_channels, layers, d_model, ffn_dim, n_heads, n_points, dropout,
                                           msda_backend, trc, trc_temperature, residual)
        self.pixel_embedding = PixelEmbedding(self.in_channels["res2"], d_model, mask_dim,
                                              output_conv=light_pixel_embedding(d_model) if lpe else None)

