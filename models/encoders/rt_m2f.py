"""RT-M2F: RT-DETR's hybrid encoder in Mask2Former, docs/models.md §4.1-4.3.

BN input projections of res3..res5; AIFI (one post-norm transformer layer, 8 heads, FFN 1024,
GELU) on the stride-32 tokens only, with RT-DETR's 2-D sin-cos embedding; CCFM top-down and
bottom-up fusion with CSPRep blocks (3 RepVGG blocks, SiLU); outputs reordered low resolution
first; Mask2Former's stride-4 mask branch on res2 and the stride-8 output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import ENCODERS
from models.encoders.analytic import F_ENC, NORM, C, Tokens
from models.encoders.base import PixelDecoder, PixelEmbedding

POS_EMBED_MODES = ("faithful", "fixed")
PosEmbedMode = Literal["faithful", "fixed"]


def sincos_2d(h: int, w: int, dim: int = 256, temperature: float = 10000.0, layout: str = "faithful",
              device: torch.device | None = None) -> torch.Tensor:
    """RT-DETR's 2-D sin-cos embedding (1, h*w, dim) from integer grid coordinates.

    ``faithful``: RT-DETR's meshgrid over (w, h) flattened w-major while tokens are h-major, which
    scrambles non-square maps. ``fixed``: transformers' correction (PR #41380): token (i, j) gets
    [sin, cos](i * omega) then [sin, cos](j * omega), identical to ``faithful`` on square maps.
    """
    if dim % 4:
        raise ValueError(f"embedding dim must be divisible by 4, got {dim}")
    kw = {"dtype": torch.float32, "device": device}
    omega = 1.0 / temperature ** (torch.arange(dim // 4, **kw) / (dim // 4))
    if layout == "faithful":
        first, second = torch.meshgrid(torch.arange(w, **kw), torch.arange(h, **kw), indexing="ij")
    elif layout == "fixed":
        first, second = torch.meshgrid(torch.arange(h, **kw), torch.arange(w, **kw), indexing="ij")
    else:
        raise ValueError(f"pos_embed must be one of {list(POS_EMBED_MODES)}, got {layout!r}")
    out_1 = first.flatten()[:, None] * omega[None]
    out_2 = second.flatten()[:, None] * omega[None]
    return torch.cat([out_1.sin(), out_1.cos(), out_2.sin(), out_2.cos()], dim=1)[None]


class ConvNormLayer(nn.Sequential):
    """Conv (no bias, 'same' padding) + BatchNorm + optional SiLU."""

    def __init__(self, ch_in: int, ch_out: int, kernel: int, stride: int = 1, act: bool = True) -> None:
        super().__init__(nn.Conv2d(ch_in, ch_out, kernel, stride, padding=(kernel - 1) // 2, bias=False),
                         nn.BatchNorm2d(ch_out), nn.SiLU() if act else nn.Identity())


class RepVggBlock(nn.Module):
    """SiLU(BN(3x3 conv(x)) + BN(1x1 conv(x))), the training (unfused) form."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormLayer(channels, channels, 3, act=False)
        self.conv2 = ConvNormLayer(channels, channels, 1, act=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """RT-DETR's CSPRepLayer: conv3(blocks(conv1(x)) + conv2(x)); the two branches are added."""

    def __init__(self, ch_in: int, ch_out: int, num_blocks: int = 3, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(ch_out * expansion)
        self.conv1 = ConvNormLayer(ch_in, hidden, 1)
        self.conv2 = ConvNormLayer(ch_in, hidden, 1)
        self.bottlenecks = nn.Sequential(*(RepVggBlock(hidden) for _ in range(num_blocks)))
        self.conv3 = ConvNormLayer(hidden, ch_out, 1) if hidden != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class AIFILayer(nn.Module):
    """Post-norm transformer layer: q = k = x + pos, v = x; GELU FFN."""

    def __init__(self, d_model: int = 256, nhead: int = 8, ffn_dim: int = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, k, value=src, need_weights=False)[0]))
        return self.norm2(src + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(src))))))


class HybridEncoder(nn.Module):
    """Input projections + AIFI on stride 32 + CCFM; returns [s32, s16, s8] (M2F's order)."""

    levels = ("res3", "res4", "res5")

    def __init__(self, in_channels: Mapping[str, int], hidden_dim: int = 256, nhead: int = 8, ffn_dim: int = 1024,
                 dropout: float = 0.0, expansion: float = 1.0, num_blocks: int = 3, pe_temperature: float = 10000.0,
                 pos_embed: str = "faithful") -> None:
        super().__init__()
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[k], hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim))
            for k in self.levels)
        self.aifi = AIFILayer(hidden_dim, nhead, ffn_dim, dropout)
        self.hidden_dim, self.pe_temperature, self.pos_embed = hidden_dim, pe_temperature, pos_embed
        n = len(self.levels) - 1
        self.lateral_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 1) for _ in range(n))
        self.fpn_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion) for _ in range(n))
        self.downsample_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 3, 2) for _ in range(n))
        self.pan_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion) for _ in range(n))

    def forward(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        proj = [p(features[k]) for p, k in zip(self.input_proj, self.levels, strict=True)]  # [s8, s16, s32]
        b, c, h, w = proj[-1].shape
        pos = sincos_2d(h, w, c, self.pe_temperature, self.pos_embed, proj[-1].device).to(proj[-1].dtype)
        memory = self.aifi(proj[-1].flatten(2).transpose(1, 2), pos)
        proj[-1] = memory.transpose(1, 2).reshape(b, c, h, w).contiguous()  # as RT-DETR: no strided conv input
        # top-down: lateral conv on the coarser map, upsample x2, fuse with the finer projection
        inner = [proj[-1]]
        for i, idx in enumerate(range(len(proj) - 1, 0, -1)):
            high = self.lateral_convs[i](inner[0])
            inner[0] = high  # the bottom-up path fuses with the lateral outputs
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[i](torch.cat([up, proj[idx - 1]], dim=1)))
        # bottom-up
        outs = [inner[0]]
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], dim=1)))
        return outs[::-1]


def csp_macs(n: int, expansion: float, num_blocks: int = 3) -> int:
    """MACs of one CSPRep layer on ``n`` tokens (RepVGG blocks in training form, as counted upstream)."""
    h = int(C * expansion)
    return 2 * n * 2 * C * h + num_blocks * 10 * n * h * h + (n * h * C if h != C else 0)


@ENCODERS.register("rt_m2f")
class RTM2FPixelDecoder(PixelDecoder):
    """RT-M2F pixel decoder: ``expansion`` (CSPRep width, default 1.0), ``pos_embed`` (faithful | fixed)."""

    analytic_input_norm = False  # BatchNorm after the input projections: 0 MACs, as detectron2 counts it

    @staticmethod
    def analytic_layers(tokens: Tokens, expansion: float = 1.0, num_blocks: int = 3, ffn_dim: int = F_ENC,
                        **_: Any) -> tuple[int, int]:
        """AIFI on the s32 tokens, CCFM's laterals, down-sampling convs and four CSPRep blocks."""
        t = tokens
        aifi = 4 * t.n32 * C * C + 2 * t.n32 * t.n32 * C + 2 * t.n32 * C * ffn_dim
        lateral = C * C * (t.n32 + t.n16)
        upsample = C * (t.n16 + t.n8)  # nearest: 1 per output element
        down = 9 * C * C * (t.n16 + t.n32)
        blocks = sum(csp_macs(n, expansion, num_blocks) for n in (t.n16, t.n8, t.n16, t.n32))
        return aifi + lateral + down + blocks, 2 * NORM * t.n32 * C + upsample

    @staticmethod
    def variant_label(options: Mapping[str, Any]) -> str:
        label = f"rt_m2f(e{float(options['expansion']):g})"
        return label + ("+pos_fixed" if options["pos_embed"] == "fixed" else "")

    def __init__(self, in_channels: Mapping[str, int], expansion: float = 1.0, pos_embed: PosEmbedMode = "faithful",
                 num_blocks: int = 3, d_model: int = 256, mask_dim: int = 256, ffn_dim: int = 1024, n_heads: int = 8,
                 dropout: float = 0.0, pe_temperature: float = 10000.0, msda_backend: str = "pytorch",
                 force_fp32: bool = True) -> None:
        super().__init__(in_channels, force_fp32)
        if not expansion > 0:
            raise ValueError(f"encoder.expansion must be > 0, got {expansion}")
        if pos_embed not in POS_EMBED_MODES:
            raise ValueError(f"encoder.pos_embed must be one of {list(POS_EMBED_MODES)}, got {pos_embed!r}")
        if num_blocks < 1:
            raise ValueError(f"encoder.num_blocks must be >= 1, got {num_blocks}")
        self.msda_backend = msda_backend  # accepted for a uniform interface; RT-M2F has no deformable attention
        self.transformer = HybridEncoder(self.in_channels, d_model, n_heads, ffn_dim, dropout, expansion, num_blocks,
                                         pe_temperature, pos_embed)
        self.pixel_embedding = PixelEmbedding(self.in_channels["res2"], d_model, mask_dim)
