"""The report's tables: accuracy joined to measured rows, the main table, the paper table, speed conversion,
the fast-path comparison; each written as CSV, markdown and LaTeX."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from models.stages import STAGES  # noqa: F401  (the figures read them from here)
from reports.reference import label_hardware
from reports.render import Table, markdown_table, shown_values

ACCURACY = Path(__file__).with_name("accuracy.csv")
GROUP = ["hardware", "device", "precision", "mode", "msda_backend", "batch", "resolution", "dataset", "backbone"]
# the fast-path section compares execution configurations within one measured setting
SETTING = ["hardware", "device", "batch", "resolution", "dataset", "backbone"]
EXECUTION = ["msda_backend", "mode", "precision", "force_fp32"]


def load_accuracy(path: Path | str | None = None, measured: pd.DataFrame | None = None,
                  user: pd.DataFrame | None = None) -> pd.DataFrame:
    """Accuracy per (dataset, backbone, variant): a measured row (``python -m bench.evaluate``) first, then a
    user CSV's (``user``: the CSV at ``path`` when already read), then the published one; ``kind`` says which
    (measured / reported)."""
    acc = pd.read_csv(ACCURACY, dtype={"variant": str}).assign(kind="reported")
    if path:
        user = read_user_accuracy(Path(path)) if user is None else user
        user = user.assign(metric=user.get("metric", "PQ"), source=user.get("source", str(path)), kind="reported")
        acc = pd.concat([user, acc])
    if measured is not None and len(measured):
        acc = pd.concat([measured_accuracy(measured), acc])
    return acc.drop_duplicates(["dataset", "backbone", "variant"], keep="first")


HEADLINE_METRICS = ("PQ", "mIoU", "AP")


def measured_accuracy(rows: pd.DataFrame) -> pd.DataFrame:
    """One accuracy per (dataset, backbone, variant) from the store's evaluations: the fp32 one on the most
    images (a whole split before a subset), its headline metric (PQ, else mIoU, else AP)."""
    r = rows.copy()
    metric = next((m for m in HEADLINE_METRICS if m in r), None)
    if metric is None:
        return pd.DataFrame()
    r["metric"] = [next((m for m in HEADLINE_METRICS if m in r and pd.notna(x[m])), None) for _, x in r.iterrows()]
    r["value"] = [x[m] if m else math.nan for m, (_, x) in zip(r["metric"], r.iterrows(), strict=True)]
    r["source"] = [f"measured: {str(x.get('checkpoint_sha256') or x.get('checkpoint'))[:12]}, {x['images']} images, "
                   f"{x.get('precision')}, encbench evaluate" for _, x in r.iterrows()]
    r["note"] = "measured"
    r = r.assign(fp32=r.get("precision", "fp32") == "fp32").sort_values(["fp32", "images"], ascending=False)
    return r[["dataset", "backbone", "variant", "metric", "value", "note", "source"]].assign(kind="measured")


class AccuracyError(ValueError):
    """A user's accuracy CSV that cannot be used; the message names the file and what it needs."""


def read_user_accuracy(path: Path) -> pd.DataFrame:
    """A user's accuracy CSV; any problem is an ``AccuracyError``."""
    need = "columns dataset, backbone, variant, value (metric, source optional)"
    if Path(path).is_dir():
        raise AccuracyError(f"accuracy CSV {path} is a folder; name a CSV file with {need}")
    try:
        user = pd.read_csv(path, dtype={"variant": str})
    except FileNotFoundError:
        raise AccuracyError(f"accuracy CSV {path} does not exist") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise AccuracyError(f"accuracy CSV {path} cannot be read ({type(err).__name__}: {err}); it needs {need}"
                         ) from None
    missing = {"dataset", "backbone", "variant", "value"} - set(user.columns)
    if missing:
        raise AccuracyError(f"accuracy CSV {path} lacks columns {sorted(missing)}; needs {need}")
    values = pd.to_numeric(user["value"], errors="coerce")
    bad = user.loc[values.isna(), "value"]
    if len(bad):
        raise AccuracyError(f"accuracy CSV {path}: column value must be numeric; line(s) "
                         f"{', '.join(str(i + 2) for i in bad.index[:5])} hold {list(bad.astype(str)[:5])}")
    key = ["dataset", "backbone", "variant"] + (["metric"] if "metric" in user.columns else [])
    twice = user[user.duplicated(key, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        lines = ", ".join(str(i + 2) for i in twice.index[:5])
        raise AccuracyError(f"accuracy CSV {path}: lines {lines} give more than one value for "
                            f"{', '.join(f'{k}={first[k]}' for k in key)} (and maybe others); keep one")
    return user.assign(value=values)


MEASURED_COLUMNS = {
    "dataset": "dataset", "backbone": "backbone", "variant": "variant", "checkpoint_short": "checkpoint",
    "images": "images", "device": "device", "precision": "precision", "msda_backend": "msda backend",
    "force_fp32": "force_fp32", "PQ": "PQ", "PQ_th": "PQ things", "PQ_st": "PQ stuff", "mIoU": "mIoU", "AP": "AP",
    "delta_vs_fp32": "Δ headline vs fp32", "compute_s_per_img": "s/img (model)", "device_name": "hardware",
}


def measured_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Every stored evaluation, with the change of its headline metric against the same checkpoint's fp32,
    PyTorch-backend evaluation on the same images (the accuracy cost of a precision or backend choice)."""
    t = rows.copy()
    t["checkpoint_short"] = t["checkpoint_sha256"].fillna(t["checkpoint"]).astype(str).str[:12]
    metric = next((m for m in HEADLINE_METRICS if m in t), None)
    t["delta_vs_fp32"] = math.nan
    if metric:
        base = t[(t["precision"] == "fp32") & (t["msda_backend"] == "pytorch")]
        ref = base.drop_duplicates(["checkpoint_short", "data", "images"], keep="last").set_index(
            ["checkpoint_short", "data", "images"])[metric]
        keys = list(zip(t["checkpoint_short"], t["data"], t["images"], strict=True))
        t["delta_vs_fp32"] = [v - ref.get(k, math.nan) for v, k in zip(t[metric], keys, strict=True)]
    t = t.sort_values(["dataset", "backbone", "variant", "checkpoint_short", "precision"])
    return t[[c for c in MEASURED_COLUMNS if c in t]].rename(columns=MEASURED_COLUMNS)


def code_note(g: pd.DataFrame, current: str | None) -> str:
    """Which code measured a group: its commit(s) and fingerprint(s), with a warning when they differ."""
    if g["reference"].notna().all():
        current = None  # shipped results: measured by the code named in their folder's README
    fps = sorted(g["code_fingerprint"].fillna("unknown").astype(str).unique())
    commits = sorted(g["git_commit"].fillna("unknown").astype(str).unique())
    where = f"commit {', '.join(commits)}"
    if len(fps) > 1:
        return (f"Warning: this group mixes rows measured by {len(fps)} code versions (fingerprints "
                f"{', '.join(fps)}; {where}); a front here compares numbers from different code.")
    stale = "" if current is None or fps[0] == current else " (not the current code: stale rows, kept)"
    return f"Measured by code {fps[0]}{stale}, {where}."


def prepare(rows: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Measured ok rows with a hardware/resolution label and the reported accuracy joined."""
    from bench.row import COLUMNS

    df = rows.reindex(columns=list(dict.fromkeys([*COLUMNS, "reference", *rows.columns])))  # missing: NaN
    df = df.infer_objects()  # a store's all-None columns concatenated with numbers stay objects otherwise
    df = df[df["status"] == "ok"].copy()
    if df.empty:
        return df
    df["hardware"] = np.where(df["device"] == "cuda", df.get("gpu_name"), df.get("cpu_name"))
    df["hardware"] = df["hardware"].fillna(df["device"])
    df = label_hardware(df)
    df["resolution"] = df["height"].astype(int).astype(str) + "x" + df["width"].astype(int).astype(str)
    # the pixel decoder's time: timed alone (every mode) where measured, else the eager stage time
    df["pd_latency_ms"] = df["latency_ms_pixel_decoder_alone_p50"].fillna(df["latency_ms_pixel_decoder_p50"])
    df["pd_latency_ci95"] = df["latency_ms_pixel_decoder_alone_ci95"].where(
        df["latency_ms_pixel_decoder_alone_p50"].notna())  # the stage time has no interval
    df["force_fp32"] = df["force_fp32"].fillna(True).astype(bool)
    current = code_version()
    df["stale"] = (df["code_fingerprint"] != current) & df["reference"].isna()
    df["code"] = df["code_fingerprint"].fillna("unknown").astype(str) + np.where(df["stale"], " (stale)", "")
    acc = accuracy.rename(columns={"value": "accuracy", "metric": "accuracy_metric", "kind": "accuracy_kind",
                                  "source": "accuracy_source", "note": "accuracy_note"})
    return df.merge(acc, how="left", on=["dataset", "backbone", "variant"])


def code_version() -> str:
    from bench.fingerprint import code_fingerprint

    return code_fingerprint()


LATENCY_CI = {"pd_latency_ms": "pd_latency_ci95", "latency_ms_p50": "latency_ms_ci95",
              "latency_ms_pixel_decoder_alone_p50": "latency_ms_pixel_decoder_alone_ci95"}


def speed_conversion(g: pd.DataFrame, lat: str = "pd_latency_ms", macs: str = "gmacs_pixel_decoder"
                     ) -> pd.DataFrame:
    """Per variant: latency and MAC reductions vs M2F, the 95 % interval of the latency reduction, and their
    ratio (how much saving became speed). The baseline gets no interval against itself, and no conversion is
    given where the interval holds 0 (the variant cannot be told from M2F at this noise)."""
    base = g[g["encoder"] == "m2f"]
    if base.empty or g[lat].isna().all():
        return pd.DataFrame()
    from reports.compare import ratio_interval

    b = base.iloc[0]
    ci = g.get(LATENCY_CI.get(lat), pd.Series(math.nan, index=g.index))  # the latency's CI half-width
    t = g[["variant", macs, lat]].copy()
    t["mac_reduction"] = 1 - t[macs] / b[macs]
    t["latency_reduction"] = 1 - t[lat] / b[lat]
    bounds = [ratio_interval(float(b[lat]), float(ci[base.index[0]]), float(v), float(c))
              for v, c in zip(t[lat], ci, strict=True)]
    t["latency_reduction_low"] = [1 - hi for _, _, hi in bounds]  # 95 % interval of the reduction
    t["latency_reduction_high"] = [1 - lo for _, lo, _ in bounds]
    t.loc[base.index[0], ["latency_reduction_low", "latency_reduction_high"]] = math.nan  # not against itself
    t["speed_conversion"] = t["latency_reduction"] / t["mac_reduction"].where(t["mac_reduction"].abs() > 1e-9)
    t.loc[~distinguishable(t), "speed_conversion"] = math.nan
    return t


def distinguishable(t: pd.DataFrame) -> pd.Series:
    """False where the latency reduction's 95 % interval holds 0 (true where no interval is known)."""
    low, high = t["latency_reduction_low"], t["latency_reduction_high"]
    return ~(low.notna() & (low <= 0) & (high >= 0))


def headline(g: pd.DataFrame, key: dict) -> list[str]:
    """Sentences a reviewer could quote: each variant's MAC saving and how much of it became latency."""
    parts = [key["dataset"], key["backbone"], key["resolution"], f"batch {key['batch']}",
             f"{key['precision']} {key['mode']}", key["msda_backend"]]
    where = f"On {key['hardware']} ({', '.join(str(p) for p in parts if pd.notna(p) and str(p) != 'nan')})"
    conv = speed_conversion(g)
    if conv.empty:
        base = g[g["encoder"] == "m2f"]
        if base.empty:
            return []
        macs = ", ".join(f"{v} by {100 * (1 - m / base['gmacs_pixel_decoder'].iloc[0]):.0f} %"
                         for v, m in zip(g["variant"], g["gmacs_pixel_decoder"], strict=True) if v != "m2f")
        return [f"{where}, no latency was measured: pixel-decoder MACs fall {macs} against M2F."]
    out = []
    for _, r in conv[conv["variant"] != base_variant(g)].iterrows():
        text = (f"{where}, {r['variant']} cuts pixel-decoder MACs by {100 * r['mac_reduction']:.0f} % and its "
                f"latency by {100 * r['latency_reduction']:.0f} %")
        low, high = r["latency_reduction_low"], r["latency_reduction_high"]
        if pd.notna(low):
            text += f" (95 % CI {100 * low:.0f} to {100 * high:.0f} %)"
        if pd.isna(r["speed_conversion"]) and pd.notna(low):
            out.append(text + ": at this noise its latency cannot be told from M2F's, so no speed conversion is "
                       "given.")
        else:
            out.append(text + f": a speed conversion of {r['speed_conversion']:.2f}.")
    busy = contended(g)
    if busy:
        out.append(f"{where}, other processes used the CPU while these were timed ({busy}): their latencies may be "
                   "off by more than their intervals say; re-measure on a quiet machine.")
    tied = overlapping(g)
    if tied:
        out.append(f"{where}, these pixel-decoder latencies overlap within their 95 % intervals and cannot be ranked "
                   "against each other at this noise: " + "; ".join(" ~ ".join(group) for group in tied) + ".")
    return out


CONTENDED_CORES = 0.25  # other processes kept at least this many cores busy on average: said in the headline


def contended(g: pd.DataFrame) -> str:
    """The variants whose timed loop shared the CPU with other processes (``cpu_others_cores``), with how
    many cores those kept busy; empty when none did (or it was not recorded)."""
    cores = pd.to_numeric(g.get("cpu_others_cores", pd.Series(math.nan, index=g.index)), errors="coerce")
    hit = g.assign(cores=cores)[cores >= CONTENDED_CORES].sort_values("cores", ascending=False)
    return "; ".join(f"{v}: {c:.1f} cores" for v, c in zip(hit["variant"], hit["cores"], strict=True))


def overlapping(g: pd.DataFrame, lat: str = "pd_latency_ms") -> list[list[str]]:
    """Groups of variants (fastest first) whose latency intervals (p50 +- CI half-width) chain into one
    another; variants without an interval are left out."""
    ci = g.get(LATENCY_CI.get(lat), pd.Series(math.nan, index=g.index))
    rows = sorted((float(v), float(c), str(name)) for name, v, c in zip(g["variant"], g[lat], ci, strict=True)
                  if pd.notna(v) and pd.notna(c))
    groups: list[list[str]] = []
    reach = -math.inf
    for value, half, name in rows:
        if groups and value - half <= reach:
            groups[-1].append(name)
        else:
            groups.append([name])
        reach = max(reach, value + half) if len(groups[-1]) > 1 else value + half
    return [grp for grp in groups if len(grp) > 1]


def base_variant(g: pd.DataFrame) -> str:
    return str(g.loc[g["encoder"] == "m2f", "variant"].iloc[0])


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


MAIN_COLUMNS = {
    "variant": "variant", "backbone": "backbone", "dataset": "dataset", "resolution": "resolution", "batch": "batch",
    "accuracy": "accuracy", "accuracy_metric": "metric", "accuracy_kind": "accuracy kind",
    "params_total": "params (M)", "params_pixel_decoder": "pixdec params (M)",
    "gmacs_total": "G-MACs total", "gmacs_pixel_decoder": "G-MACs pixdec", "gflops_total": "GFLOPs total",
    "latency_ms_p50": "latency p50 (ms)", "latency_ms_p90": "p90 (ms)", "fps": "FPS (measured)",
    "pd_latency_ms": "pixdec (ms)", "gpu_busy_ms": "GPU busy (ms)",
    "roofline_frac_pixel_decoder": "pixdec roofline frac", "err_mask_features_rel": "mask-feature rel. err",
    "mem_peak_alloc_mb": "peak mem (MB)", "energy_j_per_img_net": "J/img net", "energy_j_per_img_gross": "J/img gross",
    "hardware": "hardware", "precision": "precision", "mode": "mode", "msda_backend": "msda backend",
    "accuracy_source": "accuracy source", "code": "code",
}


WIDE = ["accuracy source"]  # in the CSV, not on the page


def main_table(df: pd.DataFrame) -> pd.DataFrame:
    t = df[[c for c in MAIN_COLUMNS if c in df]].copy()
    for c in ("params_total", "params_pixel_decoder"):
        if c in t:
            t[c] = t[c] / 1e6
    t["accuracy"] = t["accuracy"].map(lambda v: "n/a (not published)" if pd.isna(v) else v)
    return t.rename(columns=MAIN_COLUMNS)


def narrow(t: pd.DataFrame) -> pd.DataFrame:
    """The page's version of a table: no all-empty column and no wide text column."""
    return t.drop(columns=[c for c in t if c in WIDE or t[c].isna().all()])


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """PRO-SCALE's Cityscapes FPS table (Swin-T, 1024x2048) with our measurements beside it."""
    g = df[(df["dataset"] == "cityscapes") & (df["backbone"] == "swin_t") & (df["resolution"] == "1024x2048")]
    if g.empty:
        return pd.DataFrame()
    cols = {"variant": "variant", "accuracy": "PQ", "accuracy_kind": "PQ kind",
            "fps_reported": "FPS (reported, GPU n/s)",
            "fps": "FPS (measured)", "latency_ms_p50": "latency p50 (ms, measured)",
            "gmacs_pixel_decoder": "pixdec G-MACs (measured)", "gmacs_total": "total G-MACs (measured)",
            "hardware": "hardware", "precision": "precision", "batch": "batch"}
    return g[[c for c in cols if c in g]].rename(columns=cols)


def write_table(t: pd.DataFrame, out: Path, name: str, note: str = "", shown: pd.DataFrame | None = None
                ) -> Table:
    """CSV (every column, NaN empty, full precision), markdown and LaTeX files of ``shown`` (default: the
    table itself); returns the table for the report."""
    t.to_csv(out / f"{name}.csv", index=False)
    table = Table(name, shown_values(t if shown is None else shown), note)
    (out / f"{name}.md").write_text(markdown_table(table) + "\n")
    latex = table.shown.to_latex(index=False, float_format="%.3g", escape=True)
    (out / f"{name}.tex").write_text("% requires \\usepackage{booktabs}\n" + latex.replace("\\hline", "\\midrule"))
    return table
