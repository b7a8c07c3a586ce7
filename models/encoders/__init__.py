"""Pixel decoders ("transformer encoders"), one file each, registered by name in ``ENCODERS``."""

from models.registry import Registry

ENCODERS: Registry = Registry("encoder")

from models.encoders import lite_m2f, m2f, proscale, rt_m2f  # noqa: E402,F401  (register themselves)
from models.encoders.base import PixelDecoder, PixelDecoderOutput  # noqa: E402

__all__ = ["ENCODERS", "PixelDecoder", "PixelDecoderOutput"]
