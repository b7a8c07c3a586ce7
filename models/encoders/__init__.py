"""Pixel decoders ("transformer encoders"), one file each, registered by name in ``ENCODERS``."""

from models.registry import Registry

ENCODERS: Registry = Registry("encoder")

from models.encoders import m2f  # noqa: E402,F401  (registers "m2f")
from models.encoders.base import PixelDecoder, PixelDecoderOutput  # noqa: E402

__all__ = ["ENCODERS", "PixelDecoder", "PixelDecoderOutput"]
