"""Build the report from the results store: figures (PNG + SVG), tables (CSV, markdown, LaTeX),
``report.md`` and a self-contained ``index.html``.

Measured values come from the store; accuracy is *reported* (published, with its source) and is
joined on (dataset, backbone, variant). A variant without a published accuracy is listed as such.
Each figure is drawn per measurement group (hardware, precision, batch, resolution, dataset,
backbone) and stamped with it; fronts never mix hardware or precision.
"""

from __future__ import annotations

import base64
import html
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

ACCURACY = Path(__file__).with_name("accuracy.csv")
GROUP = ["hardware", "device", "precision", "mode", "msda_backend", "batch", "resolution", "dataset", "backbone"]
# the fast-path section compares execution configurations within one measured setting
SETTING = ["hardware", "device", "batch", "resolution", "dataset", "backbone"]
EXECUTION = ["msda_backend", "mode", "precision", "force_fp32"]
STAGES = ["backbone", "pixel_decoder", "transformer_decoder", "postprocess"]


def load_accuracy(path: Path | str | None = None) -> pd.DataFrame:
    """The published numbers, overridden row by row by a user CSV with the same key columns."""
    acc = pd.read_csv(ACCURACY, dtype={"variant": str})
    if path:
        user = pd.read_csv(path, dtype={"variant": str})
        missing = {"dataset", "backbone", "variant", "value"} - set(user.columns)
        if missing:
            raise ValueError(f"accuracy CSV {path} lacks columns {sorted(missing)}; needs dataset, backbone, "
                             "variant, value (metric, source optional)")
        user = user.assign(metric=user.get("metric", "PQ"), source=user.get("source", str(path)))
        acc = pd.concat([user, acc]).drop_duplicates(["dataset", "backbone", "variant"], keep="first")
    return acc


def prepare(rows: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Measured ok rows with a hardware/resolution label and the reported accuracy joined."""
    from bench.row import COLUMNS

    df = rows.reindex(columns=list(dict.fromkeys([*COLUMNS, *rows.columns])))  # missing columns: NaN
    df = df[df["status"] == "ok"].copy()
    if df.empty:
        return df
    df["hardware"] = np.where(df["device"] == "cuda", df.get("gpu_name"), df.get("cpu_name"))
    df["hardware"] = df["hardware"].fillna(df["device"])
    df["resolution"] = df["height"].astype(int).astype(str) + "x" + df["width"].astype(int).astype(str)
    # the pixel decoder's time: timed alone (every mode) where measured, else the eager stage time
    df["pd_latency_ms"] = df["latency_ms_pixel_decoder_alone_p50"].fillna(df["latency_ms_pixel_decoder_p50"])
    df["force_fp32"] = df["force_fp32"].fillna(True).astype(bool)
    acc = accuracy.rename(columns={"value": "accuracy_reported", "metric": "accuracy_metric",
                                  "source": "accuracy_source", "note": "accuracy_note"})
    return df.merge(acc, how="left", on=["dataset", "backbone", "variant"])


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
                                         "msda_backend", "device") if k in key)
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw)


def pareto_figure(g: pd.DataFrame, x: str, xlabel: str, key: dict, out: Path, name: str, log: bool = False,
                  higher_better: bool = False) -> str | None:
    """Reported accuracy vs a measured cost, the front as a step line, every point labelled."""
    if g[x].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    has = g[g["accuracy_reported"].notna() & g[x].notna()]
    cost = -has[x] if higher_better else has[x]
    mask = pareto_mask(cost.to_numpy(), has["accuracy_reported"].to_numpy())
    ax.scatter(has[x][~mask], has["accuracy_reported"][~mask], c="0.6", label="dominated")
    ax.scatter(has[x][mask], has["accuracy_reported"][mask], c="C3", label="Pareto-optimal", zorder=3)
    if mask.any():
        fx, fy = front_steps(cost.to_numpy(), has["accuracy_reported"].to_numpy())
        ax.step(-fx if higher_better else fx, fy, where="post", c="C3", lw=1, alpha=0.7)
    for _, r in has.iterrows():
        ax.annotate(r["variant"], (r[x], r["accuracy_reported"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    missing = g[g["accuracy_reported"].isna() & g[x].notna()]
    if len(missing):
        y0 = has["accuracy_reported"].min() - 1 if len(has) else 0
        ax.scatter(missing[x], [y0] * len(missing), marker="x", c="C0", label="no reported accuracy")
        for _, r in missing.iterrows():
            ax.annotate(r["variant"], (r[x], y0), fontsize=6, rotation=30, xytext=(2, 2), textcoords="offset points")
    if log:
        ax.set_xscale("log")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    metric = has["accuracy_metric"].dropna().iloc[0] if has["accuracy_metric"].notna().any() else "PQ"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (reported)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    stamp(fig, key)
    return save(fig, out, name)


def speed_conversion(g: pd.DataFrame, lat: str = "pd_latency_ms", macs: str = "gmacs_pixel_decoder"
                     ) -> pd.DataFrame:
    """Per variant: latency and MAC reductions vs M2F, and their ratio (how much saving became speed)."""
    base = g[g["encoder"] == "m2f"]
    if base.empty or g[lat].isna().all():
        return pd.DataFrame()
    b = base.iloc[0]
    t = g[["variant", macs, lat]].copy()
    t["mac_reduction"] = 1 - t[macs] / b[macs]
    t["latency_reduction"] = 1 - t[lat] / b[lat]
    t["speed_conversion"] = t["latency_reduction"] / t["mac_reduction"].where(t["mac_reduction"].abs() > 1e-9)
    return t


FAST_COLUMNS = {
    "variant": "variant", "msda_backend": "backend", "mode": "mode", "precision": "precision",
    "force_fp32": "pixdec fp32", "gmacs_pixel_decoder": "pixdec G-MACs", "pd_latency_ms": "pixdec ms",
    "latency_ms_p50": "model ms", "energy_j_per_img_net": "J/img net", "mac_reduction": "MAC red. vs M2F",
    "latency_reduction": "latency red. vs M2F", "speed_conversion": "speed conversion",
    "speedup_vs_reference": "pixdec speed-up vs M2F pytorch eager fp32",
    "roofline_frac_pixel_decoder": "pixdec roofline frac",
    "err_mask_features_rel": "mask-feature rel. err",
}


def fast_path_table(g: pd.DataFrame) -> pd.DataFrame:
    """One measured setting: every variant x execution configuration, with the speed conversion against M2F
    under the same configuration and the speed-up against M2F's reference configuration (pytorch, eager, fp32)."""
    parts = []
    for _, h in g.groupby(EXECUTION, dropna=False):
        conv = speed_conversion(h)
        if conv.empty:
            continue
        parts.append(h.drop(columns=["mac_reduction", "latency_reduction", "speed_conversion"], errors="ignore")
                     .assign(**conv[["mac_reduction", "latency_reduction", "speed_conversion"]]))
    if not parts:
        return pd.DataFrame()
    t = pd.concat(parts)
    computed = ["mac_reduction", "latency_reduction", "speed_conversion"]
    t[computed] = t[computed].astype(float)
    ref = t[(t["encoder"] == "m2f") & (t["msda_backend"] == "pytorch") & (t["mode"] == "eager")
            & (t["precision"] == "fp32")]
    t["speedup_vs_reference"] = ref["pd_latency_ms"].iloc[0] / t["pd_latency_ms"] if len(ref) else math.nan
    t = t.sort_values(["variant", "pd_latency_ms"])
    return t[[c for c in FAST_COLUMNS if c in t]].rename(columns=FAST_COLUMNS)


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


def fast_path_section(df: pd.DataFrame, figs: Path, tabs: Path) -> tuple[str, list[str], list[str]] | None:
    """"Fast path": how much of each MAC saving became pixel-decoder speed, per backend, mode and precision."""
    files, tables = [], []
    for key_vals, g in df.dropna(subset=["pd_latency_ms"]).groupby(SETTING, dropna=False):
        key = dict(zip(SETTING, key_vals, strict=True))
        t = fast_path_table(g)
        if t.empty:
            continue
        tag = slug(key)
        header = (f"**{key['dataset']} / {key['backbone']} / {key['resolution']} / batch {key['batch']} / "
                  f"{key['hardware']}**: speed conversion = latency reduction / MAC reduction, both vs M2F under the "
                  "same backend, mode and precision (1 = every MAC saved became time saved).\n\n")
        tables.append(header + write_table(t, tabs, f"fast_path_{tag}"))
        fig = conversion_figure(t, key, figs, f"conversion_{tag}")
        if fig:
            files.append(fig)
    if not tables:
        return None
    return "Fast path: FLOP savings vs speed, per MSDA backend, mode and precision", files, tables


def flops_to_speed_figure(g: pd.DataFrame, key: dict, out: Path, name: str, y: str, ylabel: str) -> tuple[str | None,
                                                                                                           float]:
    data = g[["variant", "gmacs_pixel_decoder", y]].dropna()
    if len(data) < 2:
        return None, math.nan
    rho = data["gmacs_pixel_decoder"].corr(data[y], method="spearman")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(data["gmacs_pixel_decoder"], data[y])
    for _, r in data.iterrows():
        ax.annotate(r["variant"], (r["gmacs_pixel_decoder"], r[y]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    slope, icpt = np.polyfit(data["gmacs_pixel_decoder"], data[y], 1)
    xs = np.linspace(0, data["gmacs_pixel_decoder"].max() * 1.05, 50)
    ax.plot(xs, slope * xs + icpt, "--", c="0.4", label=f"fit: {slope:.3g}/GMAC + {icpt:.3g}; Spearman rho {rho:.2f}")
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


MAIN_COLUMNS = {
    "variant": "variant", "backbone": "backbone", "dataset": "dataset", "resolution": "resolution", "batch": "batch",
    "accuracy_reported": "PQ (reported)", "params_total": "params (M)", "params_pixel_decoder": "pixdec params (M)",
    "gmacs_total": "G-MACs total", "gmacs_pixel_decoder": "G-MACs pixdec", "gflops_total": "GFLOPs total",
    "latency_ms_p50": "latency p50 (ms)", "latency_ms_p90": "p90 (ms)", "fps": "FPS (measured)",
    "pd_latency_ms": "pixdec (ms)", "gpu_busy_ms": "GPU busy (ms)",
    "roofline_frac_pixel_decoder": "pixdec roofline frac", "err_mask_features_rel": "mask-feature rel. err",
    "mem_peak_alloc_mb": "peak mem (MB)", "energy_j_per_img_net": "J/img net", "energy_j_per_img_gross": "J/img gross",
    "hardware": "hardware", "precision": "precision", "mode": "mode", "msda_backend": "msda backend",
    "accuracy_source": "accuracy source",
}


def main_table(df: pd.DataFrame) -> pd.DataFrame:
    t = df[[c for c in MAIN_COLUMNS if c in df]].copy()
    for c in ("params_total", "params_pixel_decoder"):
        if c in t:
            t[c] = t[c] / 1e6
    t["accuracy_reported"] = t["accuracy_reported"].map(lambda v: "n/a (not published)" if pd.isna(v) else v)
    return t.rename(columns=MAIN_COLUMNS)


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """PRO-SCALE's Cityscapes FPS table (Swin-T, 1024x2048) with our measurements beside it."""
    g = df[(df["dataset"] == "cityscapes") & (df["backbone"] == "swin_t") & (df["resolution"] == "1024x2048")]
    if g.empty:
        return pd.DataFrame()
    cols = {"variant": "variant", "accuracy_reported": "PQ (reported)", "fps_reported": "FPS (reported, GPU n/s)",
            "fps": "FPS (measured)", "latency_ms_p50": "latency p50 (ms, measured)",
            "gmacs_pixel_decoder": "pixdec G-MACs (measured)", "gmacs_total": "total G-MACs (measured)",
            "hardware": "hardware", "precision": "precision", "batch": "batch"}
    return g[[c for c in cols if c in g]].rename(columns=cols)


def write_table(t: pd.DataFrame, out: Path, name: str) -> str:
    """CSV (NaN empty), markdown and LaTeX (NaN as an en dash); returns the markdown."""
    t.to_csv(out / f"{name}.csv", index=False)
    shown = t.astype(object).where(t.notna(), "–")
    # a column with a NaN is no longer numeric for tabulate: format its floats here (as floatfmt would)
    shown = shown.apply(lambda col: col.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v))
    md = shown.to_markdown(index=False)
    (out / f"{name}.md").write_text(md + "\n")
    latex = shown.to_latex(index=False, float_format="%.3g", escape=True)
    latex = latex.replace("\\toprule", "\\toprule").replace("\\hline", "\\midrule")
    (out / f"{name}.tex").write_text("% requires \\usepackage{booktabs}\n" + latex)
    return md


def build_report(rows: pd.DataFrame, out_dir: Path | str, accuracy: Path | str | None = None) -> dict[str, Any]:
    """Write the report under ``out_dir``; returns what was written."""
    out = Path(out_dir)
    figs, tabs = out / "figures", out / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    df = prepare(rows, load_accuracy(accuracy))
    sections: list[tuple[str, list[str], list[str]]] = []  # (title, figure files, markdown tables)
    summary: dict[str, Any] = {"rows": int(len(rows)), "ok": int(len(df)), "figures": [], "tables": []}
    failed = rows[rows["status"] != "ok"] if len(rows) else rows
    if df.empty:
        (out / "report.md").write_text("# encbench report\n\nNo successful measurements in the store.\n")
        (out / "index.html").write_text("<html><body><h1>encbench report</h1><p>No successful measurements.</p>"
                                        "</body></html>")
        return summary
    notes = []
    if df["latency_ms_p50"].isna().all():
        notes.append("No latency or energy was measured (no GPU): this report shows FLOPs, parameters and memory; "
                     "FPS and energy plots are omitted.")
    md_main = write_table(main_table(df), tabs, "main")
    summary["tables"].append("main")
    sections.append(("All measurements (reported accuracy joined; measured costs)", [], [md_main]))
    paper = paper_table(df)
    if not paper.empty:
        sections.append(("PRO-SCALE Cityscapes FPS table: reported vs measured", [], [write_table(paper, tabs,
                                                                                                  "paper_cityscapes")]))
        summary["tables"].append("paper_cityscapes")
    for key_vals, g in df.groupby(GROUP, dropna=False):
        key = dict(zip(GROUP, key_vals, strict=True))
        tag = slug(key)
        title = f"{key['dataset']} / {key['backbone']} / {key['resolution']} / batch {key['batch']} / " \
                f"{key['precision']} {key['mode']} / {key['hardware']}"
        files = [pareto_figure(g, "gmacs_total", "total G-MACs (measured, fvcore; paper 'GFLOPs')", key, figs,
                               f"pareto_gmacs_total_{tag}", log=True),
                 pareto_figure(g, "gmacs_pixel_decoder", "pixel-decoder G-MACs (measured)", key, figs,
                               f"pareto_gmacs_pixdec_{tag}", log=True),
                 pareto_figure(g, "fps", "FPS (measured)", key, figs, f"pareto_fps_{tag}", higher_better=True),
                 pareto_figure(g, "energy_j_per_img_net", "energy per image, J (measured, net of idle)", key, figs,
                               f"pareto_energy_{tag}"),
                 stacked_figure(g, key, figs, f"stages_gmacs_{tag}", "gmacs_", "", "G-MACs per stage (measured)"),
                 stacked_figure(g, key, figs, f"stages_latency_{tag}", "latency_ms_", "_p50",
                                "latency per stage, ms (measured)")]
        tables = []
        lat_fig, rho = flops_to_speed_figure(g, key, figs, f"flops_to_latency_{tag}", "pd_latency_ms",
                                             "pixel-decoder latency, ms (measured)")
        en_fig, _ = flops_to_speed_figure(g, key, figs, f"flops_to_energy_{tag}", "energy_j_per_img_net",
                                          "energy per image, J net (measured)")
        files += [lat_fig, en_fig]
        conv = speed_conversion(g)
        if not conv.empty:
            name = f"speed_conversion_{tag}"
            header = f"Spearman rho (pixel-decoder G-MACs vs latency): {rho:.2f}\n\n"
            tables.append(header + write_table(conv, tabs, name))
            summary["tables"].append(name)
        files = [f for f in files if f]
        summary["figures"] += files
        sections.append((title, files, tables))
    fast = fast_path_section(df, figs, tabs)
    if fast:
        sections.append(fast)
        summary["figures"] += fast[1]
        summary["tables"] += [f"fast_path_{slug(dict(zip(SETTING, k, strict=True)))}" for k, _ in
                              df.dropna(subset=["pd_latency_ms"]).groupby(SETTING, dropna=False)]
    for x, label, name in (("pixels", "input pixels", "resolution_scaling"), ("batch", "batch", "batch_scaling")):
        d = df.assign(pixels=df["height"] * df["width"])
        per = ["variant", "backbone", "hardware", "precision"] + (["batch"] if x == "pixels" else ["resolution"])
        f = scaling_figure(d, x, "gmacs_pixel_decoder", label, "pixel-decoder G-MACs (measured)", figs,
                           f"{name}_gmacs", per)
        g2 = scaling_figure(d.assign(lat_per_img=d["latency_ms_p50"] / d["batch"]), x, "lat_per_img", label,
                            "latency per image, ms (measured)", figs, f"{name}_latency", per)
        files = [v for v in (f, g2) if v]
        if files:
            sections.append((label.capitalize() + " scaling", files, []))
            summary["figures"] += files
    write_markdown(out, sections, notes, failed)
    write_html(out, sections, notes, failed)
    return summary


def write_markdown(out: Path, sections, notes, failed: pd.DataFrame) -> None:
    lines = ["# encbench report", "", "Accuracy values are *reported* (published, see `accuracy source`); every other "
             "number is *measured* by encbench.", ""]
    lines += [f"> {n}" for n in notes]
    for title, files, tables in sections:
        lines += ["", f"## {title}", ""]
        lines += [f"![{f}](figures/{f})" for f in files]
        for t in tables:
            lines += ["", t]
    if len(failed):
        lines += ["", "## Jobs that did not succeed", "", failed[["status", "variant", "backbone", "dataset",
                                                                   "error"]].to_markdown(index=False)]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def write_html(out: Path, sections, notes, failed: pd.DataFrame) -> None:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>encbench report</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:48%;margin:4px}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             ".note{background:#fff6d5;padding:6px}</style></head><body><h1>encbench report</h1>",
             "<p>Accuracy values are <b>reported</b> (published, with their source); every other number is "
             "<b>measured</b> by encbench.</p>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    for title, files, tables in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for f in files:
            data = base64.b64encode((out / "figures" / f).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(f)}' src='data:image/png;base64,{data}'>")
        for t in tables:
            parts.append(md_table_to_html(t))
    if len(failed):
        parts.append("<h2>Jobs that did not succeed</h2>" + failed[["status", "variant", "backbone", "dataset",
                                                                     "error"]].to_html(index=False))
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts))


def md_table_to_html(md: str) -> str:
    """A markdown pipe table (with optional leading text) as HTML."""
    lines = md.strip().splitlines()
    pre = [ln for ln in lines if not ln.startswith("|")]
    rows = [ln for ln in lines if ln.startswith("|")]
    out = [f"<p>{html.escape(p)}</p>" for p in pre if p.strip()]
    if rows:
        cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
        head, body = cells[0], cells[2:]
        out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</table>")
    return "\n".join(out)
