"""Backbones from ``transformers`` configs (random init, no hub access), registered by name.

Every backbone maps a normalised, padded image (B, 3, H, W) with H, W multiples of 32 to
``{res2, res3, res4, res5}`` NCHW maps at strides 4, 8, 16, 32, with Mask2Former's widths.
"""

from models.registry import Registry

BACKBONES: Registry = Registry("backbone")

from models.backbones import hf  # noqa: E402,F401  (registers r50, r101, swin_*)
from models.backbones.hf import HFBackbone  # noqa: E402

__all__ = ["BACKBONES", "HFBackbone"]
