"""``python -m reports [collect|export|build] [key=value ...]``: the results store and the report.

- ``build`` (default): the report from ``results/results.sqlite`` into ``report/``.
- ``collect``: add every ``result.json`` under ``runs=DIR`` (default ``results/runs`` and ``multirun``).
- ``export``: ``results.csv``, ``results.parquet`` and ``history.csv`` into ``export=DIR``.

Options (``key=value``): ``results=DIR`` (results/), ``report.out=DIR`` (report/),
``report.accuracy=CSV`` (your accuracy numbers: columns dataset, backbone, variant, value[, metric,
source]; they override the published ones), ``runs=DIR``, ``export=DIR`` (results/export).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ("results", "report.out", "report.accuracy", "runs", "export")


def parse(argv: list[str]) -> tuple[str, dict[str, str]]:
    command, opts = "build", {}
    for arg in argv:
        if "=" in arg:
            key, value = arg.split("=", 1)
            if key not in OPTIONS:
                raise SystemExit(f"unknown option {key!r}; valid options: {', '.join(OPTIONS)}")
            opts[key] = value
        elif arg in ("build", "collect", "export"):
            command = arg
        else:
            raise SystemExit(f"unknown command {arg!r}; valid commands: build, collect, export\n\n{__doc__}")
    return command, opts


def main(argv: list[str] | None = None) -> int:
    from bench.store import ResultStore
    from reports.build import build_report

    command, opts = parse(sys.argv[1:] if argv is None else argv)
    results = Path(opts.get("results", REPO / "results"))
    with ResultStore(results / "results.sqlite") as store:
        if command == "collect":
            roots = [Path(opts["runs"])] if "runs" in opts else [results / "runs", REPO / "multirun"]
            added, seen = store.collect([r for r in roots if r.exists()])
            print(f"collected {added} new rows ({seen} already in the store) into {store.path}")
            return 0
        if command == "export":
            paths = store.export(opts.get("export", results / "export"))
            print("wrote " + ", ".join(map(str, paths)))
            return 0
        rows = store.frame()
    out = Path(opts.get("report.out", REPO / "report"))
    summary = build_report(rows, out, opts.get("report.accuracy"))
    print(f"report: {out / 'index.html'} ({summary['ok']} measured rows of {summary['rows']}, "
          f"{len(summary['figures'])} figures, {len(summary['tables'])} tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
