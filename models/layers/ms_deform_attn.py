"""Multi-scale deformable attention module and the post-norm deformable encoder layer.

Follows Mask2Former's ``MSDeformAttn`` (docs/models.md §2.1): value projection over all value
tokens, sampling offsets and attention weights from the query, a softmax over the L*P samples
of each head, locations = reference point + offset / (W_l, H_l), the core, an output projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from models.ops.msda import MSDA_BACKENDS, msda_core


@lru_cache(maxsize=64)
def offset_normalizer(spatial_shapes: tuple[tuple[int, int], ...], device: torch.device, dtype: torch.dtype
                      ) -> torch.Tensor:
    """(L, 2) tensor of (W_l, H_l), built once per shapes/device/dtype.

    Cached so that a forward pass makes no host-to-device copy after the first call (CUDA-graph
    capture forbids one). Built outside inference mode, so a cached tensor is usable everywhere.
    """
    with torch.inference_mode(False):
        return torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device)


def sampling_locations(reference_points: torch.Tensor, offsets: torch.Tensor,
                       spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """reference (N, Lq, L, 2) + offsets (N, Lq, M, L, P, 2) / (W_l, H_l): offsets are in pixels of level l."""
    shapes = tuple(map(tuple, spatial_shapes))
    if torch.compiler.is_compiling():  # a graph constant; the cache is for eager and CUDA-graph capture
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
    else:
        normalizer = offset_normalizer(shapes, offsets.device, offsets.dtype)
    return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]


class MSDeformAttn(nn.Module):
    """Deformable attention over ``n_levels`` feature levels (queries attend sampled values)."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4,
                 backend: str = "pytorch") -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if min(n_levels, n_heads, n_points) < 1:
            raise ValueError(f"n_levels, n_heads, n_points must be >= 1, got {n_levels}, {n_heads}, {n_points}")
        if backend != "auto":
            MSDA_BACKENDS.get(backend)  # fail fast on unknown names
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Upstream init: zero offset weights, a unit direction per head times (point+1) as bias."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.constant_(lin.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]],
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (N, Lq, C), reference_points (N, Lq, L, 2) in [0, 1] (x, y), input_flatten (N, S, C)."""
        n, lq, c = query.shape
        s = input_flatten.shape[1]
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(f"expected {self.n_levels} levels, got spatial_shapes={list(spatial_shapes)}")
        if sum(h * w for h, w in spatial_shapes) != s:
            raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not add up to {s} value tokens")
        m, lvl, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, m, c // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lvl, p, 2)
        weights = F.softmax(self.attention_weights(query).view(n, lq, m, lvl * p), -1).view(n, lq, m, lvl, p)
        locations = sampling_locations(reference_points, offsets, spatial_shapes)
        out = msda_core(value, spatial_shapes, locations, weights, backend=self.backend)
        return self.output_proj(out)


class MSDeformEncoderLayer(nn.Module):
    """Post-norm deformable encoder layer: src = LN(src + MSDA(src + pos)); src = LN(src + FFN(src)).

    ``value`` defaults to ``src`` (self-attention over the multi-scale token set); encoders whose
    queries are a subset of the tokens (PRO-SCALE, Lite-M2F) pass the full token set as ``value``.
    """

    def __init__(self, d_model: int = 256, ffn_dim: int = 1024, dropout: float = 0.0, n_levels: int = 3,
                 n_heads: int = 8, n_points: int = 4, backend: str = "pytorch") -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward_ffn(self, src: torch.Tensor) -> torch.Tensor:
        src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], value: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        value = src if value is None else value
        src2 = self.self_attn(src + pos, reference_points, value, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        return self.forward_ffn(src)
