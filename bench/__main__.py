"""``python -m bench <overrides>``: measure one configuration (a Hydra app).

The result row is printed as one JSON object on the last stdout line (logs go to stderr) and
written as ``result.json`` in the job's output directory. Exit status: 0 ok, 1 failed or oom,
2 invalid configuration (bad overrides included; the reason is printed on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bench.job import run_job
from bench.row import to_json

EXIT = {"ok": 0, "skipped": 0, "failed": 1, "oom": 1, "invalid": 2}
_STARTED = False  # set once Hydra hands over a composed config: exit 1 before that is a Hydra error


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    global _STARTED
    _STARTED = True
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    row = run_job(cfg, out_dir)
    sys.stdout.write(to_json(row) + "\n")
    sys.stdout.flush()
    if row["status"] not in ("ok", "skipped"):
        print(f"{row['status']}: {row.get('invalid_reason') or row.get('error')}", file=sys.stderr)
    code = EXIT.get(row["status"], 1)
    if code and HydraConfig.get().mode.name != "MULTIRUN":
        sys.exit(code)
    return code


def precheck(args: list[str]) -> str | None:
    """The reason plain overrides do not compose (an unknown key lists the valid keys), else None.
    Command lines with Hydra flags (``--multirun``, ``--config-dir``, ...) are left to Hydra."""
    from bench.config import ConfigError, compose

    if any(a.startswith("-") for a in args):
        return None
    try:
        compose([a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))])
    except ConfigError as err:
        return str(err)
    return None


def cli() -> None:
    reason = precheck(sys.argv[1:])
    if reason:
        print(f"invalid configuration: {reason}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except SystemExit as err:
        if err.code == 1 and not _STARTED:  # Hydra's own error exit: a configuration it could not compose
            sys.exit(2)
        raise


if __name__ == "__main__":
    cli()
