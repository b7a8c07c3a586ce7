"""Analytic MAC model of the pixel decoders (docs/models.md §2.4, §3, §4, §5.5): the shared terms here,
each encoder's layers in its own file (``PixelDecoder.analytic_layers``).

Counts in fvcore's unit (one multiply-add = 1 MAC) per image, from the padded input size. Terms:
linears and convs as MACs; the MSDA core as 4*L*P*C bilinear taps plus L*P*C weighted sum per
query; GroupNorm/LayerNorm at 5 per element and bilinear upsampling at 4 (nearest at 1) per output
element, as fvcore counts them; BatchNorm, max-pool, softmax and elementwise ops at 0, as
detectron2's ignore list does. ``encoder_formula`` is the "encoder" figure of docs/models.md: the
deformable layers (or AIFI + CCFM) without norms, the figure docs/models.md §7 tabulates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

C, M, P, F_ENC = 256, 8, 4, 1024
NORM = 5  # fvcore: GroupNorm / LayerNorm (affine) MACs per element


@dataclass(frozen=True)
class Tokens:
    """Token counts per stride for an input padded to a multiple of 32."""

    n4: int
    n8: int
    n16: int
    n32: int

    @classmethod
    def from_size(cls, height: int, width: int) -> Tokens:
        h, w = -(-height // 32) * 32, -(-width // 32) * 32
        return cls(*((h // s) * (w // s) for s in (4, 8, 16, 32)))

    @property
    def n(self) -> int:
        return self.n8 + self.n16 + self.n32


def msda_query_macs(levels: int, kda: bool = False) -> int:
    """Per-query MACs of one deformable attention call, excluding the value projection."""
    if kda:  # query_proj + output_proj, offsets, two bilinear samplings, dot products + weighted sum
        return 2 * C * C + 2 * M * levels * P * C + 8 * levels * P * C + 2 * levels * P * C
    return C * C + 3 * M * levels * P * C + 5 * levels * P * C


def deform_layer(n_query: int, n_value: int, levels: int, ffn: int = F_ENC, kda: bool = False) -> tuple[int, int]:
    """(formula MACs, norm MACs) of one post-norm deformable layer."""
    formula = n_value * C * C + n_query * (msda_query_macs(levels, kda) + 2 * C * ffn)
    return formula, 2 * NORM * n_query * C


def input_projections(ch: Mapping[str, int], t: Tokens, norm: bool = True) -> int:
    counts = {"res3": t.n8, "res4": t.n16, "res5": t.n32}
    return sum(counts[k] * (ch[k] * C + (NORM * C if norm else 0)) for k in counts)


def pixel_embedding(ch: Mapping[str, int], t: Tokens, lpe: bool = False, mask_dim: int = 256) -> int:
    """res2 lateral 1x1 + GN, bilinear x2 of the stride-8 map, 3x3 conv + GN (LPE: GN only), mask 1x1."""
    lateral = t.n4 * (ch["res2"] * C + NORM * C)
    upsample = 4 * t.n4 * C
    output = t.n4 * (NORM * C + (0 if lpe else 9 * C * C))
    return lateral + upsample + output + t.n4 * C * mask_dim


class NoAnalyticModel(ValueError):
    """The encoder has no analytic MAC model (its analytic columns are NaN, nothing fails)."""


def pixel_decoder_macs(encoder: Mapping[str, Any], in_channels: Mapping[str, int], height: int, width: int,
                       batch: int = 1) -> dict[str, int]:
    """Analytic MACs of a pixel decoder: stages ``pixel_decoder_layers``, ``pixel_embedding``,
    ``pixel_decoder`` and ``encoder_formula`` (layers only, without norms)."""
    from models.encoders import ENCODERS

    name = encoder["name"]
    cls = ENCODERS.get(name) if name in ENCODERS else None
    t = Tokens.from_size(height, width)
    options = {k: v for k, v in encoder.items() if k != "name"}
    counted = cls.analytic_layers(t, **options) if cls is not None else None
    if counted is None:
        with_model = [n for n in ENCODERS.names() if ENCODERS.get(n).analytic_layers(t) is not None]
        raise NoAnalyticModel(f"no analytic model for encoder {name!r}; encoders with one: {', '.join(with_model)}")
    formula, extra = counted
    layers = input_projections(in_channels, t, norm=cls.analytic_input_norm) + formula + extra
    embed = pixel_embedding(in_channels, t, lpe=bool(encoder.get("lpe", False)), mask_dim=encoder.get("mask_dim", 256))
    return {k: v * batch for k, v in {"pixel_decoder_layers": layers, "pixel_embedding": embed,
                                      "pixel_decoder": layers + embed, "encoder_formula": formula}.items()}
