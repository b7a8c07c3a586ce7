"""The measures of a job, one module each, registered by name with their place in the order.

A measure is ``run(ctx) -> columns``: it reads the job's context (settings, model, input, the row so far,
the memoised runners, the GPU meter) and returns the columns it measured; ``INVALID`` in the result
lists reasons that make the row ``valid=false``. The job runs the requested measures in ``order``:
memory first (the CPU probe must see the process's first forward), then FLOPs, output error, latency,
roofline (which reads the latency), energy, and the profile last, outside every timed window.
A new measure is one module here plus its registration (``columns``: the schema columns it fills, listed in
``bench.row``; ``timed``: whether it must have the GPU to itself); the ``measure=`` choices and the GPU lock
read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.energy import GPUMeter
from bench.runners import Runner
from bench.settings import JobSettings
from models.registry import Registry

INVALID = "_invalid"  # key of a measure's result: reasons that make the row invalid


@dataclass
class JobContext:
    """Everything a measure may read."""

    cfg: dict[str, Any]
    settings: JobSettings
    model: torch.nn.Module
    images: torch.Tensor
    row: dict[str, Any]
    runner: Runner  # (postprocess, mode) -> (callable, info), built once per job
    gpu: GPUMeter
    out_dir: Path

    @property
    def cpu_probe_shared(self) -> bool:
        """On CPU with flops and memory, the FLOP-counting forward is the memory probe's first forward."""
        m = self.settings.measures
        return "flops" in m and "memory" in m and self.settings.device.type == "cpu"


@dataclass(frozen=True)
class Measure:
    """A measure: its name (the ``measure=`` value), its place in the order, what it runs, the result-row
    columns it fills (``bench.row`` lists the schema), and whether it times something (a timed measure
    holds the GPU's lock: two never overlap)."""

    name: str
    order: int
    run: Callable[[JobContext], dict[str, Any]]
    columns: tuple[str, ...] = ()
    timed: bool = False


MEASURES: Registry[Measure] = Registry("measure")


def measure(name: str, order: int, columns: tuple[str, ...] | list[str] = (), timed: bool = False
            ) -> Callable[[Callable[[JobContext], dict[str, Any]]], Callable]:
    """Decorator registering ``run(ctx) -> columns`` as measure ``name`` at position ``order``."""

    def deco(fn: Callable[[JobContext], dict[str, Any]]) -> Callable[[JobContext], dict[str, Any]]:
        MEASURES.register(name)(Measure(name, order, fn, tuple(columns), timed))
        return fn

    return deco


def timed_names() -> set[str]:
    """The measures that must have the GPU to themselves."""
    return {n for n in MEASURES.names() if MEASURES.get(n).timed}


def ordered(names: tuple[str, ...] | list[str]) -> list[Measure]:
    """The measures ``names`` in the order they must run."""
    return sorted((MEASURES.get(n) for n in names), key=lambda m: m.order)


from bench.measures import energy, error, flops, latency, memory, profile, roofline  # noqa: E402,F401

__all__ = ["INVALID", "MEASURES", "JobContext", "Measure", "measure", "ordered", "timed_names"]
