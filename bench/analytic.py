"""Analytic MAC model of every pixel decoder (encoders.md 2.4, 3.4, 4.3, 5.5).

Counts in fvcore's unit (one multiply-add = 1 MAC) per image, from the padded input size. Terms:
linears and convs as MACs; the MSDA core as 4*L*P*C bilinear taps plus L*P*C weighted sum per
query; GroupNorm/LayerNorm at 5 per element and bilinear upsampling at 4 (nearest at 1) per output
element, as fvcore counts them; BatchNorm, max-pool, softmax and elementwise ops at 0, as
detectron2's ignore list does. ``encoder_formula`` is the encoders.md "encoder" figure: the
deformable layers (or AIFI + CCFM) without norms, the number the spec's DERIVED tables quote.
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


def m2f_layers(t: Tokens, num_layers: int = 6, **_: Any) -> tuple[int, int]:
    f, n = deform_layer(t.n, t.n, 3)
    return num_layers * f, num_layers * n


def proscale_layers(t: Tokens, layers=(3, 3, 3), trc: str = "faithful", **_: Any) -> tuple[int, int]:
    f = n = 0
    for count, (tokens, levels) in zip(layers, ((t.n32, 1), (t.n32 + t.n16, 2), (t.n, 3)), strict=True):
        lf, ln = deform_layer(tokens, tokens, levels)
        f, n = f + count * lf, n + count * ln
    trc_macs = 0 if trc == "off" else (t.n32 + t.n16) * (C + 4 * C)  # gate linear + resized guide
    return f, n + trc_macs


def lite_layers(t: Tokens, high_levels: int = 2, blocks: int = 3, layers_per_block: int = 2, kda: bool = False,
                small_ffn: bool = True, **_: Any) -> tuple[int, int]:
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


def csp(n: int, expansion: float, num_blocks: int = 3) -> int:
    h = int(C * expansion)
    return 2 * n * 2 * C * h + num_blocks * 10 * n * h * h + (n * h * C if h != C else 0)


def rt_layers(t: Tokens, expansion: float = 1.0, num_blocks: int = 3, ffn_dim: int = F_ENC, **_: Any
              ) -> tuple[int, int]:
    aifi = 4 * t.n32 * C * C + 2 * t.n32 * t.n32 * C + 2 * t.n32 * C * ffn_dim
    lateral = C * C * (t.n32 + t.n16)
    upsample = C * (t.n16 + t.n8)  # nearest: 1 per output element
    down = 9 * C * C * (t.n16 + t.n32)
    blocks = csp(t.n16, expansion, num_blocks) + csp(t.n8, expansion, num_blocks) + csp(t.n16, expansion, num_blocks) \
        + csp(t.n32, expansion, num_blocks)
    return aifi + lateral + down + blocks, 2 * NORM * t.n32 * C + upsample


LAYERS = {"m2f": m2f_layers, "proscale": proscale_layers, "lite_m2f": lite_layers, "rt_m2f": rt_layers}


def pixel_decoder_macs(encoder: Mapping[str, Any], in_channels: Mapping[str, int], height: int, width: int,
                       batch: int = 1) -> dict[str, int]:
    """Analytic MACs of a pixel decoder: stages ``pixel_decoder_layers``, ``pixel_embedding``,
    ``pixel_decoder`` and the encoders.md ``encoder_formula`` (layers only, without norms)."""
    name = encoder["name"]
    if name not in LAYERS:
        raise ValueError(f"no analytic model for encoder {name!r}; valid: {sorted(LAYERS)}")
    t = Tokens.from_size(height, width)
    options = {k: v for k, v in encoder.items() if k != "name"}
    formula, extra = LAYERS[name](t, **options)
    rt = name == "rt_m2f"
    layers = input_projections(in_channels, t, norm=not rt) + formula + extra
    embed = pixel_embedding(in_channels, t, lpe=bool(encoder.get("lpe", False)), mask_dim=encoder.get("mask_dim", 256))
    return {k: v * batch for k, v in {"pixel_decoder_layers": layers, "pixel_embedding": embed,
                                      "pixel_decoder": layers + embed, "encoder_formula": formula}.items()}
