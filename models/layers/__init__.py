"""Reusable layers: positional encoding, deformable attention, encoder layers, MLP."""

from models.layers.mlp import MLP
from models.layers.ms_deform_attn import MSDeformAttn, MSDeformEncoderLayer
from models.layers.position_encoding import PositionEmbeddingSine

__all__ = ["MLP", "MSDeformAttn", "MSDeformEncoderLayer", "PositionEmbeddingSine"]
