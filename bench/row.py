"""The result row: one JSON object per job, every column documented in the README.

``new_row`` starts a row with every column present (NaN / None where not measured), so a
consumer never meets a missing key; ``config_hash`` identifies a configuration across runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from models.stages import ALL_STAGES as STAGES  # every stage and sub-stage, in column order
from models.stages import STAGES as TIMED_STAGES  # the top stages: timed by hooks on their boundaries

STATUSES = ("ok", "failed", "oom", "skipped", "invalid")

SCHEMA_VERSION = 2  # docs/results.md: bump when a column is renamed, removed or changes meaning
IDENTITY = ["schema_version", "run_id", "config_hash", "sweep", "created_at", "git_commit", "code_fingerprint",
            "status", "error", "measure"]
CONFIG = ["encoder", "variant", "backbone", "dataset", "height", "width", "batch", "precision", "force_fp32", "mode",
          "device", "msda_backend"]
PARAMS = ["params_total"] + [f"params_{s}" for s in STAGES]  # the job's (counted for every row)
FLOP_COUNTS = (["gmacs_total"] + [f"gmacs_{s}" for s in STAGES] + ["gflops_total"] + [f"gflops_{s}" for s in STAGES]
               + ["gmacs_ptflops_total"])
FLOP_QUALITY = ["flop_coverage", "flop_coverage_fvcore", "unsupported_ops", "flops_seconds"]
FLOPS = FLOP_COUNTS + FLOP_QUALITY  # the flops measure's
SIZE = PARAMS + FLOP_COUNTS + ["gmacs_analytic_pixel_decoder"] + FLOP_QUALITY  # analytic: the job's
SPEED = (["latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_ci95",
          "latency_ms_std", "wall_ms_p50", "fps", "latency_ms_e2e_p50", "timing_iters", "timing_seconds",
          "warmup_iters", "warmup_stable"]
         + [f"latency_ms_{s}_p50" for s in TIMED_STAGES]
         + ["latency_ms_pixel_decoder_alone_p50", "latency_ms_pixel_decoder_alone_ci95"]
         + ["gpu_busy_ms", "compile_seconds", "recompiles", "graph_breaks", "cpu_others_cores", "cpu_steal_frac",
            "retimed"])
ROOFLINE = ["peak_tflops", "peak_gbs", "mbytes_min_total", "floor_ms_total", "roofline_frac_total",
            "mbytes_min_pixel_decoder", "floor_ms_pixel_decoder", "roofline_frac_pixel_decoder"]
ACCURACY = ["err_mask_features_rel", "err_pred_logits_rel", "err_pred_masks_rel", "mask_agreement"]
MEMORY = ["mem_peak_alloc_mb", "mem_peak_reserved_mb", "mem_method"]
ENERGY = ["energy_j_per_img_gross", "energy_j_per_img_net", "power_w_avg", "idle_w", "energy_window_s",
          "energy_images"]
ENVIRONMENT = ["gpu_name", "gpu_uuid", "nvml_device", "driver", "torch_version", "cuda_version",
               "transformers_version", "cpu_name", "num_threads", "gpu_state_window", "sm_clock_mhz_min",
               "sm_clock_mhz_min_busy", "sm_clock_mhz_max", "temp_c_start", "temp_c_end", "throttle_reasons",
               "sampler_failures", "valid", "invalid_reason", "artifacts"]
COLUMNS = IDENTITY + CONFIG + SIZE + SPEED + ROOFLINE + ACCURACY + MEMORY + ENERGY + ENVIRONMENT
STRING_COLUMNS = {"run_id", "config_hash", "sweep", "created_at", "git_commit", "code_fingerprint", "status", "error",
                  "measure",
                  "encoder", "variant", "backbone", "dataset", "precision", "mode", "device", "msda_backend",
                  "mem_method", "gpu_name", "driver", "torch_version", "cuda_version", "transformers_version",
                  "cpu_name", "throttle_reasons", "invalid_reason", "gpu_uuid", "nvml_device", "gpu_state_window"}


def new_row() -> dict[str, Any]:
    """A row with every column: NaN for numbers, None for strings, {} for mappings."""
    from bench.fingerprint import code_fingerprint

    row: dict[str, Any] = {c: (None if c in STRING_COLUMNS else math.nan) for c in COLUMNS}
    row.update(schema_version=SCHEMA_VERSION, code_fingerprint=code_fingerprint(), unsupported_ops={}, artifacts={},
               valid=True, status="ok",
               run_id=uuid.uuid4().hex[:12], created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return row


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of the measured configuration (keys sorted, floats as JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_json(row: Mapping[str, Any]) -> str:
    """One line of JSON; NaN becomes null so every JSON parser reads it."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps({k: clean(v) for k, v in row.items()}, sort_keys=False)
