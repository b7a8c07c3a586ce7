"""Multi-scale deformable attention (MSDA) core behind a named backend registry.

The core maps value (N, S, M, D), per-level spatial shapes [(H_l, W_l)], sampling locations
(N, Lq, M, L, P, 2) in [0, 1] (x, y) and attention weights (N, Lq, M, L, P) to (N, Lq, M*D).
Backend ``pytorch`` is Mask2Former's grid_sample reference (docs/models.md §2.2); ``triton`` (in
``msda_triton``) is one fused kernel; ``auto`` picks the best backend eligible on a device
(``triton`` on CUDA when Triton is installed, ``pytorch`` elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.registry import Registry

SpatialShapes = Sequence[tuple[int, int]]
CoreFn = Callable[[torch.Tensor, SpatialShapes, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MSDABackend:
    """One MSDA core implementation: ``fn`` and a predicate telling where it can run."""

    name: str
    fn: CoreFn
    available: Callable[[torch.device], bool]
    priority: int = 0  # ``auto`` prefers the highest priority among the eligible backends
    auto: Callable[[torch.device], bool] | None = None  # where ``auto`` may pick it (default: ``available``)

    def auto_eligible(self, device: torch.device) -> bool:
        return (self.auto or self.available)(device)


MSDA_BACKENDS: Registry[MSDABackend] = Registry("msda_backend")


def register_backend(name: str, available: Callable[[torch.device], bool], priority: int = 0,
                     auto: Callable[[torch.device], bool] | None = None):
    """Decorator registering a core function as backend ``name``."""

    def deco(fn: CoreFn) -> CoreFn:
        MSDA_BACKENDS.register(name)(MSDABackend(name, fn, available, priority, auto))
        return fn

    return deco


def resolve_msda_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend that ``name`` means on ``device`` (``auto`` -> best available)."""
    device = torch.device(device)
    if name != "auto":
        backend = MSDA_BACKENDS.get(name)
        if not backend.available(device):
            usable = [b.name for b in MSDA_BACKENDS.values() if b.available(device)]
            hint = " (on CPU it runs only under Triton's interpreter, TRITON_INTERPRET=1)" if name == "triton" else ""
            raise RuntimeError(f"msda_backend {name!r} is not available on device {device.type!r}{hint}; "
                               f"available there: {', '.join(usable + ['auto'])}")
        return name
    best: MSDABackend | None = None
    for backend in MSDA_BACKENDS.values():  # a plain loop: dynamo traces it to a constant
        if backend.auto_eligible(device) and (best is None or backend.priority > best.priority):
            best = backend
    assert best is not None  # "pytorch" runs everywhere
    return best.name


def msda_core(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str = "pytorch",
) -> torch.Tensor:
    """Run the MSDA core with the named backend (``auto`` resolves per device)."""
    name = resolve_msda_backend(backend, value.device) if backend == "auto" else backend
    return MSDA_BACKENDS.get(name).fn(value, spatial_shapes, sampling_locations, attention_weights)


def msda_sample(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (zeros padding, align_corners=False): (N*M, D, Lq, L*P), one grid_sample per level."""
    n, _, m, d = value.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W): heads folded into the batch
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    return torch.stack(sampled, dim=-2).flatten(-2)


@register_backend("pytorch", available=lambda device: True)
def msda_core_pytorch(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """grid_sample reference (docs/models.md §2.2): sample every level, weight, sum over L*P."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    out = (msda_sample(value, spatial_shapes, sampling_locations) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()
