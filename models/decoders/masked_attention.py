"""Mask2Former's multi-scale masked-attention transformer decoder and heads (docs/models.md §6.1).

Nine post-norm layers (cross-attention first, then self-attention, then FFN 2048) cycle over the
levels [s32, s16, s8]; the prediction head (shared LayerNorm, class linear, 3-layer mask MLP and
the mask einsum with the stride-4 mask features) runs before layer 1 and after every layer, and
each prediction's sigmoid < 0.5, resized to the next layer's level, is that layer's attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.decoders import DECODERS
from models.layers import MLP, PositionEmbeddingSine


class CrossAttentionLayer(nn.Module):
    """tgt = LN(tgt + MHA(q=tgt+query_pos, k=memory+pos, v=memory, mask))."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        tgt2 = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory,
                                   attn_mask=memory_mask)[0]
        return self.norm(tgt + self.dropout(tgt2))


class SelfAttentionLayer(nn.Module):
    """tgt = LN(tgt + MHA(q=k=tgt+query_pos, v=tgt))."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, value=tgt)[0]
        return self.norm(tgt + self.dropout(tgt2))


class FFNLayer(nn.Module):
    """tgt = LN(tgt + Linear(ReLU(Linear(tgt))))."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(tgt2))


def _xavier(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


@DECODERS.register("m2f")
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder. ``forward`` returns the last and all intermediate predictions."""

    def __init__(self, in_channels: int = 256, num_classes: int = 133, hidden_dim: int = 256,
                 num_queries: int = 100, nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9,
                 mask_dim: int = 256, num_feature_levels: int = 3, dropout: float = 0.0,
                 enforce_input_project: bool = False) -> None:
        super().__init__()
        for key, val in {"num_classes": num_classes, "num_queries": num_queries, "dec_layers": dec_layers}.items():
            if val < 1:
                raise ValueError(f"decoder.{key} must be >= 1, got {val}")
        self.num_classes, self.num_queries, self.num_heads = num_classes, num_queries, nheads
        self.num_layers, self.num_feature_levels = dec_layers, num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout) for _ in range(dec_layers))
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
            if in_channels != hidden_dim or enforce_input_project else nn.Identity()
            for _ in range(num_feature_levels))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, multi_scale_features: Sequence[torch.Tensor],
                mask_features: torch.Tensor) -> dict[str, torch.Tensor | list[dict[str, torch.Tensor]]]:
        """Features [s32, s16, s8] (B, C, H_l, W_l) and mask features (B, mask_dim, H/4, W/4).

        Returns ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, H/4, W/4) and ``aux_outputs``.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"decoder expects {self.num_feature_levels} feature levels, "
                             f"got {len(multi_scale_features)}")
        src, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            pos.append(self.pe_layer(x).to(x.dtype).flatten(2).permute(2, 0, 1))
            proj = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(proj.permute(2, 0, 1))  # (HW, B, C): sequence-first as upstream
        bs = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)

        classes, masks = [], []
        cls, mask, attn_mask = self.forward_prediction_heads(output, mask_features, sizes[0])
        classes.append(cls)
        masks.append(mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # a query whose mask blocks every key attends everywhere (upstream's torch.where reset)
            attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](output, src[level], attn_mask, pos[level],
                                                                query_embed)
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            cls, mask, attn_mask = self.forward_prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            classes.append(cls)
            masks.append(mask)
        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1],
                                                                                 strict=True)],
        }

    def forward_prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor,
                                 target_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Class logits, masks, and the boolean attention mask (True = blocked) for the next layer."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = F.interpolate(outputs_mask, size=target_size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5
        return outputs_class, outputs_mask, attn_mask.detach()

