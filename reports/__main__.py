"""``python -m reports [build|collect|export|rebuild|compare] [key=value ...]``: the store and the report.

- ``build`` (default): the report from ``results/results.sqlite`` (opened read-only) into ``report/``.
- ``collect``: add every ``result.json`` under ``runs=DIR`` (default ``results/runs``, ``multirun`` and
  ``outputs``, where single ``python -m bench`` jobs write).
- ``export``: ``results.csv``, ``results.parquet`` and ``history.csv`` into ``export=DIR`` (read-only store).
- ``rebuild``: recreate ``results.sqlite`` from every ``result.json`` under the runs (a damaged or
  replaced store is kept beside it as ``results.sqlite.replaced-<time>``).
- ``reference reference.name=NAME``: ship the store's measured rows as ``reference/NAME/`` (``rows.csv``
  and a ``README.md`` naming hardware, driver, versions, commit and dates).
- ``compare a.COLUMN=VALUE ... b.COLUMN=VALUE ...``: an A/B verdict (FASTER / SLOWER / SAME / UNCLEAR)
  for each timed metric, with the ratio's 95 % interval (``reports.compare`` has its options).

Options (``key=value``): ``results=DIR`` (results/), ``report.out=DIR`` (report/ for the default results
directory, DIR/report otherwise), ``report.accuracy=CSV`` (your accuracy numbers: columns dataset,
backbone, variant, value[, metric, source]; they override the published ones), ``runs=DIR``,
``export=DIR`` (results/export), ``report.reference=false`` (leave out the shipped reference rows of
``reference/``), ``reference.dir=DIR`` (reference/). Exit status: 0 done, 2 bad input (unknown option,
missing or damaged store, unreadable accuracy CSV), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "results"
SINGLE_RUNS = (REPO / "multirun", REPO / "outputs")  # Hydra's folders of multiruns and single jobs
EXIT_LOCKED = 3  # as the sweep's: another process holds the results directory
REFERENCE = REPO / "reference"
OPTIONS = ("results", "report.out", "report.accuracy", "report.reference", "runs", "export", "reference.name",
           "reference.dir")
COMMANDS = ("build", "collect", "export", "rebuild", "reference", "compare")


class UsageError(Exception):
    """Bad input; the message says what is valid."""


def parse(argv: list[str]) -> tuple[str, dict[str, str]]:
    command, opts = "build", {}
    for arg in argv:
        if "=" in arg:
            key, value = arg.split("=", 1)
            if key not in OPTIONS:
                raise UsageError(f"unknown option {key!r}; valid options: {', '.join(OPTIONS)}")
            opts[key] = value
        elif arg in COMMANDS:
            command = arg
        else:
            raise UsageError(f"unknown command {arg!r}; valid commands: {', '.join(COMMANDS)}\n\n{__doc__}")
    return command, opts


def report_dir(results: Path) -> Path:
    """Where the report goes by default: ``report/`` for the default results directory, else beside it."""
    return REPO / "report" if results == DEFAULT_RESULTS else results / "report"


def run(command: str, opts: dict[str, str]) -> int:
    from bench.locks import LockHeld, results_lock
    from bench.store import ResultStore

    results = Path(opts.get("results", DEFAULT_RESULTS)).absolute()
    path = results / "results.sqlite"
    roots = [Path(opts["runs"])] if "runs" in opts else [results / "runs", *SINGLE_RUNS]
    if command in ("rebuild", "collect"):  # they write the store: never beside a running sweep
        lock = results_lock(results)
        try:
            lock.acquire()
        except LockHeld as err:
            print(f"error: {command} writes the store, and {err}; wait for the sweep to end", file=sys.stderr)
            return EXIT_LOCKED
        try:
            return rebuild(path, roots) if command == "rebuild" else collect(path, roots)
        finally:
            lock.release()
    with ResultStore(path, readonly=True) as store:
        if command == "reference":
            return ship_reference(store.frame(), opts)
        if command == "export":
            target = output_dir(Path(opts.get("export", results / "export")), "export")
            try:
                paths = store.export(target)
            except PermissionError:
                raise UsageError(f"cannot write {target}; name a writable folder with export=DIR") from None
            print("wrote " + ", ".join(map(str, paths)))
            return 0
        rows, measured = store.frame(), store.accuracy()
    reference = None if opts.get("report.reference", "true").lower() in ("false", "0", "no") \
        else Path(opts.get("reference.dir", REFERENCE))
    return build(rows, output_dir(Path(opts.get("report.out", report_dir(results))), "report.out"),
                 opts.get("report.accuracy"), reference, measured)


def output_dir(path: Path, key: str) -> Path:
    """``path`` as a folder this command can write, created if need be; ``UsageError`` names the key."""
    from bench.store import writable_dir

    try:
        writable_dir(path)
    except NotADirectoryError:
        raise UsageError(f"{key}={path} is not a folder; name a writable folder with {key}=DIR") from None
    except OSError as err:
        raise UsageError(f"{key}={path} cannot be used as an output folder ({err.strerror or err}); name a "
                         f"writable folder with {key}=DIR") from None
    return path


def rebuild(path: Path, roots: list[Path]) -> int:
    from bench.store import rebuild_store

    done, old = rebuild_store(path, roots)
    print(f"rebuilt {path}: {done.added} rows from the run directories"
          + (f"; the previous file is kept as {old}" if old else ""))
    _print_skipped(done.skipped)
    return 0


def collect(path: Path, roots: list[Path]) -> int:
    from bench.store import ResultStore

    with ResultStore(path) as store:
        done = store.collect([r for r in roots if r.exists()])
    print(f"collected {done.added} new rows ({done.seen} already in the store) into {path}")
    _print_skipped(done.skipped)
    return 0


def ship_reference(rows, opts: dict[str, str]) -> int:
    from reports.reference import write_reference

    if "reference.name" not in opts:
        raise UsageError("reference needs reference.name=NAME (e.g. h100-sxm, epyc-2core)")
    try:
        folder = write_reference(rows, opts["reference.name"], Path(opts.get("reference.dir", REFERENCE)),
                                 "python -m reports reference " + " ".join(f"{k}={v}" for k, v in opts.items()))
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"wrote {folder / 'rows.csv'} and {folder / 'README.md'}")
    return 0


def build(rows, out: Path, accuracy: str | None, reference: Path | None = None, measured=None) -> int:
    from reports.build import build_report

    try:
        summary = build_report(rows, out, accuracy, reference, measured)
    except PermissionError:
        raise UsageError(f"cannot write the report into {out}; name a writable folder with report.out=DIR") from None
    print(f"report: {out / 'index.html'} ({summary['ok']} measured rows of {summary['rows']}, "
          f"{len(summary['figures'])} figures, {len(summary['tables'])} tables)")
    return 0


def _print_skipped(skipped: list[tuple[str, str]]) -> None:
    for file, reason in skipped:
        print(f"warning: skipped {file}: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from bench.store import StoreError
    from reports.compare import CompareError
    from reports.tables import AccuracyError

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["compare"]:
            from reports.compare import run as compare

            return compare(argv[1:], DEFAULT_RESULTS)
        command, opts = parse(argv)
        return run(command, opts)
    except (UsageError, StoreError, AccuracyError, CompareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; every row written so far is complete (run the command again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
