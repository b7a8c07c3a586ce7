"""``python -m bench <overrides>``: measure one configuration (a Hydra app).

The result row is printed as one JSON object on the last stdout line (logs go to stderr) and
written as ``result.json`` in the job's output directory; a short summary for a person (parameters,
G-MACs per stage, latency with its interval, memory, where the row is) goes to stderr. Exit status:
0 ok, 1 failed or oom, 2 invalid configuration (bad overrides included; the reason is printed on stderr).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bench.job import run_job
from bench.row import to_json
from models.stages import STAGES

EXIT = {"ok": 0, "skipped": 0, "failed": 1, "oom": 1, "invalid": 2}
_STARTED = False  # set once Hydra hands over a composed config: exit 1 before that is a Hydra error


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    global _STARTED
    _STARTED = True
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    row = run_job(cfg, out_dir)
    print(summary(row, out_dir / "result.json"), file=sys.stderr)
    sys.stdout.write(to_json(row) + "\n")
    sys.stdout.flush()
    if row["status"] not in ("ok", "skipped"):
        print(f"{row['status']}: {row.get('invalid_reason') or row.get('error')}", file=sys.stderr)
    code = EXIT.get(row["status"], 1)
    if code and HydraConfig.get().mode.name != "MULTIRUN":
        sys.exit(code)
    return code


STAGE_NAMES = dict(zip(STAGES, ("backbone", "pixel decoder", "decoder", "post"), strict=True))  # as printed


def summary(row: dict[str, Any], result: Path) -> str:
    """The row for a person: what ran, parameters, G-MACs per stage, latency with its interval, memory,
    and where the row is (and how it reaches the report)."""
    what = " ".join(str(row.get(k)) for k in ("variant", "backbone", "dataset"))
    size = f"{row.get('height')}x{row.get('width')} b{row.get('batch')}"
    lines = [f"encbench: {what} {size} {row.get('precision')} {row.get('mode')} {row.get('device')}: {row['status']}"]
    if _num(row.get("params_total")):
        lines.append(f"  params       {row['params_total'] / 1e6:.2f} M (pixel decoder "
                     f"{row.get('params_pixel_decoder', 0) / 1e6:.2f} M)")
    for unit, prefix in (("G-MACs ", "gmacs_"), ("G-FLOPs", "gflops_")):
        if _num(row.get(f"{prefix}total")):
            stages = "  ".join(f"{name} {row[prefix + s]:.2f}" for s, name in STAGE_NAMES.items()
                               if _num(row.get(prefix + s)))
            lines.append(f"  {unit}      total {row[prefix + 'total']:.2f}  ({stages})")
    for label, col in (("latency", "latency_ms"), ("pixdec alone", "latency_ms_pixel_decoder_alone")):
        if _num(row.get(f"{col}_p50")):
            lines.append(f"  {label:<12} {row[col + '_p50']:.1f} ms p50 (95 % CI +-{row.get(col + '_ci95', 0):.1f} ms)")
    if _num(row.get("mem_peak_alloc_mb")):
        lines.append(f"  memory       peak {row['mem_peak_alloc_mb']:.0f} MB of tensors")
    if _num(row.get("energy_j_per_img_net")):
        lines.append(f"  energy       {row['energy_j_per_img_net']:.2f} J/img net of idle")
    for key, label in (("layers_md", "layers"), ("operators_md", "operators"), ("trace", "trace")):
        if (row.get("artifacts") or {}).get(key):
            lines.append(f"  {label:<12} {row['artifacts'][key]}")
    lines.append(f"  row          {result}" + (" (make collect adds it to results/, then make report)"
                                               if result.exists() else " (not written)"))
    return "\n".join(lines)


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


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


def cpu_timing(args: list[str]) -> list[str]:
    """``args`` with ``timing=cpu`` first when the job will run on a CPU and no timing preset is named (the
    default preset is GPU-sized: minutes per latency job on a CPU). A sweep's jobs name their own."""
    if any(a.lstrip("+~").startswith(("timing=", "timing/")) for a in args) or any(a.startswith("-") for a in args):
        return args
    device = next((a.split("=", 1)[1] for a in args if a.startswith("device=")), "auto")
    if device == "cuda" or (device == "auto" and _cuda()):
        return args
    print("on a CPU: timing=cpu (short timing; timing=default for the GPU-sized loop)", file=sys.stderr)
    return ["timing=cpu", *args]


def _cuda() -> bool:
    from bench.settings import auto_device

    return auto_device("auto").type == "cuda"


def cli() -> None:
    if "ENCBENCH_JOB_DIR" not in os.environ:  # a single job, not one of a sweep's
        sys.argv[1:] = cpu_timing(sys.argv[1:])
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
