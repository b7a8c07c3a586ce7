"""encbench model zoo: backbones, deformable attention, pixel decoders, decoder, heads.

Models know nothing of measurement. Create any model with :func:`build_model` from a config;
list what exists with the registries ``BACKBONES``, ``ENCODERS``, ``DECODERS``, ``MSDA_BACKENDS``.
"""

from models.backbones import BACKBONES
from models.build import build_model
from models.decoders import DECODERS
from models.encoders import ENCODERS
from models.ops import MSDA_BACKENDS
from models.segmentor import STAGES, SUB_STAGES, Segmentor

__all__ = ["BACKBONES", "DECODERS", "ENCODERS", "MSDA_BACKENDS", "STAGES", "SUB_STAGES", "Segmentor", "build_model"]
