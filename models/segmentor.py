"""The Mask2Former-style segmentor: backbone -> pixel_decoder -> transformer_decoder -> postprocess.

Stage names are a contract with bench/ (docs/results.md): ``backbone``, ``pixel_decoder`` (sub-stages
``pixel_decoder_layers`` and ``pixel_embedding``), ``transformer_decoder`` (with heads) and
``postprocess``. :meth:`Segmentor.stage_modules` maps each name to the module that runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import PixelDecoder
from models.postprocess import PostProcessor
from models.stages import STAGES, SUB_STAGES  # noqa: F401  (re-exported)

PIXEL_MEAN = (123.675, 116.280, 103.530)  # Mask2Former's ImageNet mean/std, 0-255 RGB
PIXEL_STD = (58.395, 57.120, 57.375)


class Preprocess(nn.Module):
    """Normalise a 0-255 image batch and pad bottom/right with zeros to a multiple of ``size_divisibility``."""

    def __init__(self, size_divisibility: int = 32) -> None:
        super().__init__()
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if min(images.shape) < 1:
            raise ValueError(f"images must be non-empty, got {tuple(images.shape)}")
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        return pad_to_divisible(x, self.size_divisibility)


def pad_to_divisible(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad the bottom/right of (B, C, H, W) so H and W are multiples of ``divisor`` (as ImageList)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(x, (0, pw, 0, ph), value=0.0) if ph or pw else x


class Segmentor(nn.Module):
    """Chains the stages; ``forward(images, postprocess=False)`` stops before post-processing."""

    def __init__(self, backbone: nn.Module, pixel_decoder: PixelDecoder, transformer_decoder: nn.Module,
                 postprocessor: PostProcessor, size_divisibility: int = 32) -> None:
        super().__init__()
        self.preprocess = Preprocess(size_divisibility)
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.postprocessor = postprocessor

    def stage_modules(self) -> dict[str, nn.Module]:
        """Stage and sub-stage name -> module (the attribution bench/ uses)."""
        return {
            "backbone": self.backbone,
            "pixel_decoder": self.pixel_decoder,
            "pixel_decoder_layers": self.pixel_decoder.transformer,
            "pixel_embedding": self.pixel_decoder.pixel_embedding,
            "transformer_decoder": self.transformer_decoder,
            "postprocess": self.postprocessor,
        }

    def forward(self, images: torch.Tensor, postprocess: bool = True,
                output_sizes: Sequence[tuple[int, int]] | None = None):
        """images: (B, 3, H, W), RGB 0-255. Returns per-image result dicts, or the raw
        decoder outputs (``pred_logits``, ``pred_masks``, ``aux_outputs``) with ``postprocess=False``."""
        x = self.preprocess(images)
        features = self.backbone(x)
        pix = self.pixel_decoder(features)
        outputs = self.transformer_decoder(pix.multi_scale_features, pix.mask_features)
        if not postprocess:
            return outputs
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return self.postprocessor(outputs["pred_logits"], outputs["pred_masks"], tuple(x.shape[-2:]), sizes,
                                  output_sizes)
