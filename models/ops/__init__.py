"""Low-level operators (the multi-scale deformable attention core and its backends)."""

from models.ops import msda_triton  # registers backend "triton" (triton itself is imported on first use)
from models.ops.msda import MSDA_BACKENDS, MSDABackend, msda_core, resolve_msda_backend

__all__ = ["MSDA_BACKENDS", "MSDABackend", "msda_core", "msda_triton", "resolve_msda_backend"]
