"""``python -m bench <overrides>``: measure one configuration (a Hydra app).

The result row is printed as one JSON object on the last stdout line (logs go to stderr) and
written as ``result.json`` in the job's output directory. Exit status: 0 ok, 1 failed or oom,
2 invalid configuration.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bench.job import run_job
from bench.row import to_json

EXIT = {"ok": 0, "skipped": 0, "failed": 1, "oom": 1, "invalid": 2}


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    row = run_job(cfg, out_dir)
    sys.stdout.write(to_json(row) + "\n")
    sys.stdout.flush()
    code = EXIT.get(row["status"], 1)
    if code and HydraConfig.get().mode.name != "MULTIRUN":
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
