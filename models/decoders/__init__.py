"""Transformer decoders (with their prediction heads), registered by name in ``DECODERS``."""

from models.registry import Registry

DECODERS: Registry = Registry("decoder")

from models.decoders import masked_attention  # noqa: E402,F401  (registers "m2f")
from models.decoders.masked_attention import MultiScaleMaskedTransformerDecoder  # noqa: E402

__all__ = ["DECODERS", "MultiScaleMaskedTransformerDecoder"]
