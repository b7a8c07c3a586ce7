"""Pareto fronts: which points no other point beats on both cost and quality."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_mask(cost: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """True where no other point has cost <= and quality >= with one of them strict (NaN: never)."""
    c, q = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    ok = np.isfinite(c) & np.isfinite(q)
    mask = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        mask[i] = not dominated.any()
    return mask


def front_steps(cost: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The front as a step line (x, y): sorted by cost, quality rising, drawn with ``where='post'``."""
    m = pareto_mask(cost, quality)
    c, q = np.asarray(cost, dtype=float)[m], np.asarray(quality, dtype=float)[m]
    order = np.argsort(c)
    return c[order], q[order]
