"""``python -m reports compare``: an A/B verdict between two selections of result rows.

``python -m reports compare a.KEY=VALUE ... b.KEY=VALUE ... [a.results=DIR|FILE] [b.results=...]
[results=DIR] [same_within=2] [fail_above=PCT] [out=CSV]``

Each side is the store's measured rows (``results``, or that side's own ``a.results`` /
``b.results``: a results directory, a ``results.sqlite``, or an exported CSV/Parquet) filtered by
its ``KEY=VALUE`` pairs on any row column. Rows of A and B are paired on the configuration
columns that neither side filters on, so ``a.variant=m2f b.variant=...`` compares two variants on
each shared setting, ``a.git_commit=X b.git_commit=Y`` two versions of the code, and
``a.gpu_name=... b.gpu_name=...`` two machines.

For each timed metric with a bootstrap interval (the model's and the pixel decoder's median
latency), the ratio B/A gets a 95 % interval from the two rows' intervals, combined in log space
(the delta method for a ratio of independent estimates). The verdict:

- FASTER: the whole interval is below ``1 - same_within``;
- SLOWER: the whole interval is above ``1 + same_within``;
- SAME: the whole interval lies within ``1 ± same_within``;
- UNCLEAR: otherwise, or when a row has no interval.

``same_within`` (percent, default 2) is the smallest change worth a name, like the noise threshold
of nvbench's compare script. ``fail_above=PCT`` makes the command exit 1 when a metric is SLOWER
by more than PCT percent at the interval's lower end: a regression gate for CI.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

METRICS = {"latency_ms_p50": "latency_ms_ci95",
           "latency_ms_pixel_decoder_alone_p50": "latency_ms_pixel_decoder_alone_ci95"}
PAIR_ON = ["encoder", "variant", "backbone", "dataset", "height", "width", "batch", "precision", "mode",
           "msda_backend", "force_fp32", "device"]
LINKED = {"variant": "encoder", "encoder": "variant"}  # selecting one of these also lets the other differ
Z95 = 1.959964
OPTIONS = ("results", "a.results", "b.results", "same_within", "fail_above", "out")


class CompareError(ValueError):
    """A selection or option that cannot be used; the message says what is valid."""


def parse(args: list[str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(filters of A, filters of B, options) from ``key=value`` arguments."""
    a, b, opts = {}, {}, {}
    for arg in args:
        if "=" not in arg:
            raise CompareError(f"expected key=value, got {arg!r}; e.g. a.variant=m2f b.variant=rt_m2f(e1)")
        key, value = arg.split("=", 1)
        if key in OPTIONS:
            opts[key] = value
        elif key.startswith("a."):
            a[key[2:]] = value
        elif key.startswith("b."):
            b[key[2:]] = value
        else:
            raise CompareError(f"unknown argument {key!r}: filters are a.COLUMN=VALUE and b.COLUMN=VALUE; "
                               f"options: {', '.join(OPTIONS)}")
    if not a and not b:
        raise CompareError("nothing to compare: give a.COLUMN=VALUE and b.COLUMN=VALUE filters")
    return a, b, opts


def load_rows(source: Path) -> pd.DataFrame:
    """Measured (ok) rows from a results directory, a shipped reference folder (its ``rows.csv``), a store
    file, or an exported CSV/Parquet."""
    from bench.store import ResultStore

    if source.is_dir():
        has_store = (source / "results.sqlite").exists() or not (source / "rows.csv").exists()
        source = source / "results.sqlite" if has_store else source / "rows.csv"
    if source.suffix == ".csv":
        df = pd.read_csv(source)
    elif source.suffix == ".parquet":
        df = pd.read_parquet(source)
    else:
        with ResultStore(source, readonly=True) as store:
            df = store.frame()
    return df[df["status"] == "ok"] if "status" in df else df


def select(df: pd.DataFrame, filters: dict[str, str], side: str) -> pd.DataFrame:
    """The rows whose columns equal ``filters`` (compared as text); an empty selection is an error
    that lists the values present."""
    out = df
    for key, value in filters.items():
        if key not in df:
            raise CompareError(f"{side}.{key}: no such column; see docs/results.md for the columns")
        matched = out[out[key].astype(str) == value]
        if matched.empty:
            present = sorted(out[key].dropna().astype(str).unique())[:12]
            raise CompareError(f"{side}.{key}={value!r} matches no measured row; present: {present}")
        out = matched
    return out


def ratio_interval(a: float, a_ci: float, b: float, b_ci: float) -> tuple[float, float, float]:
    """B/A and its 95 % interval from two medians and their CI half-widths (log-space delta method)."""
    ratio = b / a
    if not all(map(math.isfinite, (a_ci, b_ci))) or a <= 0 or b <= 0:
        return ratio, math.nan, math.nan
    spread = math.hypot(a_ci / Z95 / a, b_ci / Z95 / b) * Z95
    return ratio, ratio * math.exp(-spread), ratio * math.exp(spread)


def verdict(low: float, high: float, same_within: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "UNCLEAR"
    if high < 1 - same_within:
        return "FASTER"
    if low > 1 + same_within:
        return "SLOWER"
    if low >= 1 - same_within and high <= 1 + same_within:
        return "SAME"
    return "UNCLEAR"


def compare(a: pd.DataFrame, b: pd.DataFrame, pair_on: list[str], same_within: float = 0.02) -> pd.DataFrame:
    """One line per paired configuration and timed metric: A, B, B/A with its interval, and the verdict."""
    keys = [k for k in pair_on if k in a and k in b]
    merged = a.merge(b, on=keys, suffixes=("_a", "_b")) if keys else a.merge(b, how="cross", suffixes=("_a", "_b"))
    lines = []
    for _, r in merged.iterrows():
        for metric, ci in METRICS.items():
            va, vb = r.get(f"{metric}_a"), r.get(f"{metric}_b")
            if pd.isna(va) or pd.isna(vb):
                continue
            ratio, low, high = ratio_interval(float(va), float(r.get(f"{ci}_a", math.nan)), float(vb),
                                              float(r.get(f"{ci}_b", math.nan)))
            lines.append({**{k: r[k] for k in keys}, "metric": metric, "a": va, "a_ci95": r.get(f"{ci}_a"),
                          "b": vb, "b_ci95": r.get(f"{ci}_b"), "ratio_b_over_a": ratio, "ratio_low": low,
                          "ratio_high": high, "verdict": verdict(low, high, same_within)})
    return pd.DataFrame(lines)


def pairing_columns(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The configuration columns rows are paired on: those neither side selects on (a selected variant
    lets the encoder differ too)."""
    chosen = set(a) | set(b)
    chosen |= {LINKED[k] for k in chosen if k in LINKED}
    return [k for k in PAIR_ON if k not in chosen]


def run(args: list[str], default_results: Path) -> int:
    """The command: prints the table and a summary; returns the exit status."""
    fa, fb, opts = parse(args)
    try:
        same = float(opts.get("same_within", 2)) / 100
        fail = float(opts["fail_above"]) / 100 if "fail_above" in opts else None
    except ValueError:
        raise CompareError("same_within and fail_above are percentages, e.g. same_within=2 fail_above=5") from None
    base = opts.get("results", str(default_results))
    source_a, source_b = Path(opts.get("a.results", base)), Path(opts.get("b.results", base))
    rows_a = load_rows(source_a)
    rows_b = rows_a if source_b == source_a else load_rows(source_b)
    a, b = select(rows_a, fa, "a"), select(rows_b, fb, "b")
    table = compare(a, b, pairing_columns(fa, fb), same)
    if table.empty:
        raise CompareError(f"no pair of rows shares a configuration (paired on {pairing_columns(fa, fb)}) "
                           "with a timed metric in both; compare rows measured with latency")
    shown = table.copy()
    for c in ("a", "a_ci95", "b", "b_ci95", "ratio_b_over_a", "ratio_low", "ratio_high"):
        shown[c] = shown[c].map(lambda v: f"{v:.4g}" if pd.notna(v) else "–")
    print(shown.to_markdown(index=False))
    counts = table["verdict"].value_counts().to_dict()
    print("\nB vs A: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("FASTER", "SLOWER", "SAME", "UNCLEAR"))
          + f" (SAME within {same * 100:g} %; 95 % intervals)")
    if "out" in opts:
        table.to_csv(opts["out"], index=False)
    if fail is not None:
        worse = table[(table["verdict"] == "SLOWER") & (table["ratio_low"] > 1 + fail)]
        if len(worse):
            print(f"regression: {len(worse)} metric(s) slower by more than {fail * 100:g} % "
                  f"(lower end of the interval)")
            return 1
    return 0
