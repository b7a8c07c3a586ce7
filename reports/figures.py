"""The report's figures (PNG + SVG), each stamped with its measurement group: Pareto fronts, FLOPs vs
latency/energy, per-stage bars, scaling series, and the fast path's conversion plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.pareto import front_steps, pareto_mask  # noqa: E402
from reports.tables import STAGES  # noqa: E402

MIN_RANK_POINTS = 5  # a rank correlation over fewer points is not given


def stamp(fig: plt.Figure, key: dict[str, Any]) -> None:
    text = (f"{key.get('hardware')} ({key.get('device')}) | precision {key.get('precision')}, mode {key.get('mode')}, "
            f"msda {key.get('msda_backend')} | batch {key.get('batch')} | {key.get('resolution')} "
            f"{key.get('dataset')} | backbone {key.get('backbone')}")
    fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")


def save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=130)
    plt.close(fig)
    return f"{name}.png"


def slug(key: dict[str, Any]) -> str:
    raw = "_".join(str(key[k]) for k in ("dataset", "backbone", "resolution", "batch", "precision", "mode",
                                         "msda_backend", "device", "hardware") if k in key)
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw)


def pareto_figure(g: pd.DataFrame, x: str, xlabel: str, key: dict, out: Path, name: str, log: bool = False,
                  higher_better: bool = False) -> str | None:
    """Accuracy (reported, or measured: diamonds) vs a measured cost, the front as a step line, every point
    labelled."""
    if g[x].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    has = g[g["accuracy"].notna() & g[x].notna()]
    cost = -has[x] if higher_better else has[x]
    mask = pareto_mask(cost.to_numpy(), has["accuracy"].to_numpy())
    measured = (has["accuracy_kind"] == "measured").to_numpy()
    for sel, marker, kind in ((~measured, "o", "reported"), (measured, "D", "measured")):
        if (sel & ~mask).any():
            ax.scatter(has[x][sel & ~mask], has["accuracy"][sel & ~mask], c="0.6", marker=marker,
                       label=f"dominated ({kind} accuracy)")
        if (sel & mask).any():
            ax.scatter(has[x][sel & mask], has["accuracy"][sel & mask], c="C3", marker=marker, zorder=3,
                       label=f"Pareto-optimal ({kind} accuracy)")
    if mask.any():
        fx, fy = front_steps(cost.to_numpy(), has["accuracy"].to_numpy())
        ax.step(-fx if higher_better else fx, fy, where="post", c="C3", lw=1, alpha=0.7)
    for _, r in has.iterrows():
        ax.annotate(r["variant"], (r[x], r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    missing = g[g["accuracy"].isna() & g[x].notna()]
    if len(missing):
        y0 = has["accuracy"].min() - 1 if len(has) else 0
        ax.scatter(missing[x], [y0] * len(missing), marker="x", c="C0", label="no accuracy (not published)")
        for _, r in missing.iterrows():
            ax.annotate(r["variant"], (r[x], y0), fontsize=6, rotation=30, xytext=(2, 2), textcoords="offset points")
    if log:
        ax.set_xscale("log")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    metric = has["accuracy_metric"].dropna().iloc[0] if has["accuracy_metric"].notna().any() else "PQ"
    kinds = " or ".join(k for k, on in (("reported", (~measured).any()), ("measured", measured.any())) if on)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} ({kinds or 'reported'})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    stamp(fig, key)
    return save(fig, out, name)


def conversion_figure(t: pd.DataFrame, key: dict, out: Path, name: str) -> str | None:
    """Latency reduction vs MAC reduction, one point per variant and configuration; the diagonal is full conversion."""
    d = t.dropna(subset=["MAC red. vs M2F", "latency red. vs M2F"])
    d = d[d["MAC red. vs M2F"].abs() > 1e-9]
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    configs = d[["backend", "mode", "precision"]].fillna("n/a").astype(str).agg(" ".join, axis=1)
    for i, (cfg, sub) in enumerate(d.groupby(configs)):
        ax.scatter(sub["MAC red. vs M2F"], sub["latency red. vs M2F"], label=cfg, marker="osD^v<>p*"[i % 9])
        for _, r in sub.iterrows():
            ax.annotate(r["variant"], (r["MAC red. vs M2F"], r["latency red. vs M2F"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    vals = d[["MAC red. vs M2F", "latency red. vs M2F"]]
    lo, hi = min(0.0, float(vals.min().min())) - 0.05, max(0.05, float(vals.max().max())) + 0.05
    ax.plot([lo, hi], [lo, hi], "--", c="0.4", lw=1, label="full conversion (latency cut = MAC cut)")
    ax.axhline(0, c="0.8", lw=0.8)
    ax.set_xlabel("pixel-decoder MAC reduction vs M2F (measured)")
    ax.set_ylabel("pixel-decoder latency reduction vs M2F (measured)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    stamp(fig, {**key, "precision": "per point", "mode": "per point", "msda_backend": "per point"})
    return save(fig, out, name)


def flops_to_speed_figure(g: pd.DataFrame, key: dict, out: Path, name: str, y: str, ylabel: str) -> tuple[str | None,
                                                                                                           float]:
    data = g[["variant", "gmacs_pixel_decoder", y]].dropna()
    if len(data) < 2:
        return None, math.nan
    # a rank correlation of fewer than 5 points says little: none is given
    rho = data["gmacs_pixel_decoder"].corr(data[y], method="spearman") if len(data) >= MIN_RANK_POINTS else math.nan
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(data["gmacs_pixel_decoder"], data[y])
    for _, r in data.iterrows():
        ax.annotate(r["variant"], (r["gmacs_pixel_decoder"], r[y]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    slope, icpt = np.polyfit(data["gmacs_pixel_decoder"], data[y], 1)
    xs = np.linspace(0, data["gmacs_pixel_decoder"].max() * 1.05, 50)
    label = f"fit: {slope:.3g}/GMAC + {icpt:.3g}" + (f"; Spearman rho {rho:.2f}" if rho == rho else "")
    ax.plot(xs, slope * xs + icpt, "--", c="0.4", label=label)
    ax.set_xlabel("pixel-decoder G-MACs (measured, fvcore)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    stamp(fig, key)
    return save(fig, out, name), rho


def stacked_figure(g: pd.DataFrame, key: dict, out: Path, name: str, prefix: str, suffix: str, ylabel: str
                   ) -> str | None:
    cols = [f"{prefix}{s}{suffix}" for s in STAGES]
    if any(c not in g for c in cols) or g[cols].isna().all().all():
        return None
    data = g.set_index("variant")[cols].fillna(0)
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    bottom = np.zeros(len(data))
    for c, s in zip(cols, STAGES, strict=True):
        ax.bar(data.index, data[c], bottom=bottom, label=s)
        bottom += data[c].to_numpy()
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.legend(fontsize=7)
    stamp(fig, key)
    return save(fig, out, name)


def scaling_figure(df: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, out: Path, name: str,
                   per: Sequence[str]) -> str | None:
    """One line per series that varies only in ``x`` (e.g. resolution or batch)."""
    lines = []
    for key, g in df.groupby(list(per), dropna=False):
        g = g.dropna(subset=[y]).sort_values(x)
        if g[x].nunique() >= 2:
            lines.append((key, g))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, g in lines:
        ax.plot(g[x], g[y], marker="o", label=" ".join(str(k) for k in key))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.005, f"{lines[0][1]['hardware'].iloc[0]} | {lines[0][1]['precision'].iloc[0]}", fontsize=7,
             color="0.35")
    return save(fig, out, name)
