"""Build the report from the results store: figures (``reports.figures``), tables (``reports.tables``),
``report.md`` and a self-contained ``index.html`` (``reports.render``).

Measured values come from the store; accuracy is *measured* where the store holds an evaluation of a
checkpoint (``python -m bench.evaluate ... results=DIR``), *reported* (published, with its source)
otherwise, joined on (dataset, backbone, variant). A variant without either is listed as such.
Each figure is drawn per measurement group (hardware, precision, batch, resolution, dataset,
backbone) and stamped with it; fronts never mix hardware or precision.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from reports.figures import (
    MIN_RANK_POINTS,
    conversion_figure,
    flops_to_speed_figure,
    pareto_figure,
    scaling_figure,
    slug,
    stacked_figure,
)
from reports.reference import LABEL, load_reference
from reports.render import Section, write_report
from reports.tables import (
    GROUP,
    SETTING,
    code_note,
    code_version,
    fast_path_table,
    headline,
    load_accuracy,
    main_table,
    measured_table,
    narrow,
    paper_table,
    prepare,
    read_user_accuracy,
    speed_conversion,
    write_table,
)


def unmatched_accuracy(user: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    """A warning for each line of a user's accuracy CSV that names no measured (dataset, backbone, variant):
    a misspelt or reworded variant would otherwise drop its point silently."""
    key = ["dataset", "backbone", "variant"]
    measured = set(map(tuple, df[key].astype(str).drop_duplicates().to_numpy()))
    out = []
    for _, r in user.iterrows():
        if tuple(str(r[k]) for k in key) not in measured:
            near = sorted({v for d, b, v in measured if d == str(r["dataset"]) and b == str(r["backbone"])})
            out.append(f"Warning: the accuracy CSV's {r['dataset']} / {r['backbone']} / {r['variant']} matches no "
                       f"measured row, so it is shown nowhere; measured variants there: {', '.join(near) or 'none'}.")
    for line in out:
        print(line, file=sys.stderr)
    return out


# each measurement group's figures: (draw, its arguments after the group; the name prefix)
GROUP_FIGURES: tuple[tuple[Callable, dict[str, Any], str], ...] = (
    (pareto_figure, dict(x="gmacs_total", xlabel="total G-MACs (measured, fvcore; paper 'GFLOPs')", log=True),
     "pareto_gmacs_total"),
    (pareto_figure, dict(x="gmacs_pixel_decoder", xlabel="pixel-decoder G-MACs (measured)", log=True),
     "pareto_gmacs_pixdec"),
    (pareto_figure, dict(x="fps", xlabel="FPS (measured)", higher_better=True), "pareto_fps"),
    (pareto_figure, dict(x="energy_j_per_img_net", xlabel="energy per image, J (measured, net of idle)"),
     "pareto_energy"),
    (stacked_figure, dict(prefix="gmacs_", suffix="", ylabel="G-MACs per stage (measured)"), "stages_gmacs"),
    (stacked_figure, dict(prefix="latency_ms_", suffix="_p50", ylabel="latency per stage, ms (measured)"),
     "stages_latency"),
    (flops_to_speed_figure, dict(y="pd_latency_ms", ylabel="pixel-decoder latency, ms (measured)"),
     "flops_to_latency"),
    (flops_to_speed_figure, dict(y="energy_j_per_img_net", ylabel="energy per image, J net (measured)"),
     "flops_to_energy"),
)
# the scaling figures: (x column, its label, name), each for the pixel decoder's G-MACs and latency per image
SCALING = (("pixels", "input pixels", "resolution_scaling"), ("batch", "batch", "batch_scaling"))


def build_report(rows: pd.DataFrame, out_dir: Path | str, accuracy: Path | str | None = None,
                 reference: Path | None = None, measured: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write the report under ``out_dir``; returns what was written. With ``reference`` (a folder of
    ``<name>/rows.csv``), the shipped reference rows join as their own hardware groups."""
    out = Path(out_dir)
    shipped = load_reference(reference) if reference else pd.DataFrame()
    if len(shipped):
        rows = pd.concat([rows, shipped], ignore_index=True)
    figs, tabs = out / "figures", out / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    user = read_user_accuracy(Path(accuracy)) if accuracy else None  # read once: joined, and checked below
    df = prepare(rows, load_accuracy(accuracy, measured, user))
    summary: dict[str, Any] = {"rows": int(len(rows)), "ok": int(len(df)), "figures": [], "tables": []}
    failed = rows[rows["status"] != "ok"] if len(rows) else rows
    if df.empty:
        write_report(out, measured_section(measured, tabs, summary), ["No successful measurements in the store."],
                     failed)
        return summary
    headlines, groups = group_sections(df, figs, tabs, summary)
    sections = [h for h in headlines if h.notes] + groups + extra_sections(df, measured, figs, tabs, summary)
    write_report(out, sections, report_notes(df, shipped, user), failed)
    return summary


def report_notes(df: pd.DataFrame, shipped: pd.DataFrame, user: pd.DataFrame | None) -> list[str]:
    """The notes at the top: reference rows, stale rows, unmatched accuracy lines, no latency."""
    notes = []
    if len(shipped):
        notes.append(f"{len(shipped)} rows are {LABEL} results ({', '.join(sorted(shipped['reference'].unique()))}; "
                     "see reference/): each is its own hardware group, never on one front with your rows.")
    if df["stale"].any():
        notes.append(f"{int(df['stale'].sum())} of {len(df)} rows were measured by other code than the current "
                     f"({code_version()}); the table marks them '(stale)'. A sweep re-measures them unless "
                     "--keep-stale.")
    if user is not None:
        notes += unmatched_accuracy(user, df)
    if df["latency_ms_p50"].isna().all():
        notes.append("No latency or energy was measured (no GPU): this report shows FLOPs, parameters and memory; "
                     "FPS and energy plots are omitted.")
    return notes


def group_sections(df: pd.DataFrame, figs: Path, tabs: Path, summary: dict[str, Any]
                   ) -> tuple[list[Section], list[Section]]:
    """Per hardware, the speed-conversion finding (first in the report); per measurement group, its figures."""
    headlines: dict[str, Section] = {}
    sections = []
    for key_vals, g in df.groupby(GROUP, dropna=False):
        key = dict(zip(GROUP, key_vals, strict=True))
        tag = slug(key)
        title = f"{key['dataset']} / {key['backbone']} / {key['resolution']} / batch {key['batch']} / " \
                f"{key['precision']} {key['mode']} / {key['hardware']}"
        drawn = {name: draw(g, key=key, out=figs, name=f"{name}_{tag}", **args) for draw, args, name in GROUP_FIGURES}
        lat_fig, rho = drawn["flops_to_latency"]
        drawn["flops_to_latency"], drawn["flops_to_energy"] = lat_fig, drawn["flops_to_energy"][0]
        head = headlines.setdefault(key["hardware"], Section(f"How much of the MAC saving became speed on "
                                                             f"{key['hardware']}"))
        head.notes += headline(g, key)
        conv = speed_conversion(g)
        if not conv.empty:
            rank = (f"Spearman rho (pixel-decoder G-MACs vs latency): {rho:.2f}" if rho == rho else
                    f"No rank correlation: fewer than {MIN_RANK_POINTS} variants")
            head.tables.append(write_table(conv, tabs, f"speed_conversion_{tag}", f"{title}. {rank}"))
            head.figures += [f for f in (lat_fig,) if f]
            summary["tables"].append(f"speed_conversion_{tag}")
        files = [f for f in drawn.values() if f]
        summary["figures"] += files
        sections.append(Section(title, files, [], [code_note(g, code_version())]))
    return list(headlines.values()), sections


def extra_sections(df: pd.DataFrame, measured: pd.DataFrame | None, figs: Path, tabs: Path,
                   summary: dict[str, Any]) -> list[Section]:
    """The paper table, the fast path, the scaling figures, the measured accuracy and the full table (last)."""
    sections = []
    paper = paper_table(df)
    if not paper.empty:
        sections.append(Section("PRO-SCALE Cityscapes FPS table: reported vs measured", [],
                                [write_table(paper, tabs, "paper_cityscapes")]))
        summary["tables"].append("paper_cityscapes")
    fast = fast_path_section(df, figs, tabs)
    if fast:
        sections.append(fast)
        summary["figures"] += fast.figures
        summary["tables"] += [f"fast_path_{slug(dict(zip(SETTING, k, strict=True)))}" for k, _ in
                              df.dropna(subset=["pd_latency_ms"]).groupby(SETTING, dropna=False)]
    d = df.assign(pixels=df["height"] * df["width"], lat_per_img=df["latency_ms_p50"] / df["batch"])
    for x, label, name in SCALING:
        per = ["variant", "backbone", "hardware", "precision"] + (["batch"] if x == "pixels" else ["resolution"])
        files = [f for f in (
            scaling_figure(d, x, "gmacs_pixel_decoder", label, "pixel-decoder G-MACs (measured)", figs,
                           f"{name}_gmacs", per),
            scaling_figure(d, x, "lat_per_img", label, "latency per image, ms (measured)", figs, f"{name}_latency",
                           per)) if f]
        if files:
            sections.append(Section(label.capitalize() + " scaling", files, []))
            summary["figures"] += files
    sections += measured_section(measured, tabs, summary)
    full = main_table(df)
    sections.append(Section("All measurements (reported accuracy joined; measured costs)", [],
                            [write_table(full, tabs, "main", "Empty columns are left out here; tables/main.csv "
                                         "has every column, and results.csv every measured value.", narrow(full))]))
    summary["tables"].append("main")
    return sections


def measured_section(measured: pd.DataFrame | None, tabs: Path, summary: dict[str, Any]) -> list[Section]:
    """The table of the store's evaluations (none: no section)."""
    if measured is None or measured.empty:
        return []
    summary["tables"].append("measured_accuracy")
    return [Section("Measured accuracy (python -m bench.evaluate)", [], [write_table(
        measured_table(measured), tabs, "measured_accuracy", "Each evaluation of a checkpoint; the change is against "
        "the same checkpoint's fp32, PyTorch-backend evaluation on the same images.")])]


def fast_path_section(df: pd.DataFrame, figs: Path, tabs: Path) -> Section | None:
    """"Fast path": how much of each MAC saving became pixel-decoder speed, per backend, mode and precision."""
    files, tables = [], []
    for key_vals, g in df.dropna(subset=["pd_latency_ms"]).groupby(SETTING, dropna=False):
        key = dict(zip(SETTING, key_vals, strict=True))
        t = fast_path_table(g)
        if t.empty:
            continue
        tag = slug(key)
        note = (f"{key['dataset']} / {key['backbone']} / {key['resolution']} / batch {key['batch']} / "
                f"{key['hardware']}: speed conversion = latency reduction / MAC reduction, both vs M2F under the "
                "same backend, mode and precision (1 = every MAC saved became time saved).")
        tables.append(write_table(t, tabs, f"fast_path_{tag}", note))
        fig = conversion_figure(t, key, figs, f"conversion_{tag}")
        if fig:
            files.append(fig)
    if not tables:
        return None
    return Section("Fast path: FLOP savings vs speed, per MSDA backend, mode and precision", files, tables)
