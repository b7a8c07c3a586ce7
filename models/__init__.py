"""encbench model zoo: backbones, deformable attention, pixel decoders, decoder, heads.

Models know nothing of measurement. Create any model with :func:`build_model` from a config;
list what exists with the registries ``BACKBONES``, ``ENCODERS``, ``DECODERS``, ``MSDA_BACKENDS``.
"""


from __future__ import annotations

import importlib
from typing import Any

from models.stages import STAGES, SUB_STAGES

# imported on first use, so that ``models.stages`` (plain names) costs no torch import
_LAZY = {"BACKBONES": "models.backbones", "build_model": "models.build", "DECODERS": "models.decoders",
         "ENCODERS": "models.encoders", "MSDA_BACKENDS": "models.ops", "Segmentor": "models.segmentor"}

__all__ = ["BACKBONES", "DECODERS", "ENCODERS", "MSDA_BACKENDS", "STAGES", "SUB_STAGES", "Segmentor", "build_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
