"""Build the model an evaluation runs (from a checkpoint, its configuration inferred) and run it over a
dataset as detectron2's ``inference_on_dataset`` does: one image per iteration, the first
``min(warmup, N - 1)`` iterations left out of the timing, the device synchronised around each call,
post-processing inside the timed call."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.evaluate.datasets import DatasetError

RANDOM = "random"  # checkpoint=random: random weights (a pipeline and throughput check; accuracy near zero)
NOT_INFERABLE = ("encoder.trc_temperature", "encoder.residual", "input.object_mask_threshold",
                 "input.overlap_threshold", "input.topk_per_image")


@dataclass
class Built:
    """The model with what its weights said and what the user said."""

    model: torch.nn.Module
    config: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def as_overrides(inferred: Mapping[str, Any]) -> list[str]:
    """Hydra overrides from ``infer_config``'s mapping (lists as ``[a,b,c]``, booleans lower-case)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list | tuple):
            return "[" + ",".join(value(x) for x in v) + "]"
        return str(v)

    groups = [k for k in inferred if "." not in k]  # a group choice goes before its keys
    return [f"{k}={value(inferred[k])}" for k in [*groups, *(k for k in inferred if "." in k)]]


def merge_overrides(inferred: Sequence[str], user: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides to compose, notes): the user's settings win over the inferred ones; each key the user
    changes is noted with both values."""
    mine = {_key(o): o for o in user}
    notes = [f"{o} (inferred) replaced by your {mine[_key(o)]}" for o in inferred
             if _key(o) in mine and o != mine[_key(o)]]
    return [o for o in inferred if _key(o) not in mine] + list(user), notes


def build(checkpoint: str, user: Sequence[str], input_preset: str, msda_backend: str) -> Built:
    """The model for ``checkpoint`` (or random weights), strictly loaded; ``CheckpointError`` explains a misfit."""
    from omegaconf import OmegaConf

    from models import build_model
    from models.checkpoints import infer_config, load_weights, read_checkpoint

    ckpt = None
    if checkpoint == RANDOM:
        inferred = [f"input={input_preset}"]
    else:
        ckpt = read_checkpoint(checkpoint)
        inferred = as_overrides(infer_config(ckpt.tensors))
    overrides, notes = merge_overrides(inferred, [*user, f"msda_backend={msda_backend}"])
    composed = model_config(overrides)
    cfg = OmegaConf.to_container(composed, resolve=True)
    model = build_model(cfg)
    defaults = {k: OmegaConf.select(composed, k) for k in NOT_INFERABLE}
    report: dict[str, Any] = {"inferred": inferred, "yours": list(user), "notes": notes, "overrides": overrides,
                              "defaults_not_inferable": {k: v for k, v in defaults.items() if v is not None}}
    if ckpt is None:
        report.update(path=RANDOM, sha256=None, format="random weights (seed 0)")
    else:
        report.update(load_weights(model, ckpt).as_dict())
    return Built(model.eval(), cfg, report)


def model_config(overrides: Sequence[str]) -> Any:
    """The model's composed config; inside the running Hydra app its own compose is used (the same conf/)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from bench.config import ConfigError, compose, explain

    if not GlobalHydra.instance().is_initialized():
        try:
            return compose(overrides)
        except ConfigError as err:
            raise DatasetError(f"model overrides: {err}") from None
    from hydra import compose as hydra_compose

    try:
        return hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as err:
        raise DatasetError(f"model overrides: {explain(err, list(overrides))}") from None


def device_of(name: str) -> torch.device:
    from bench.settings import auto_device

    if name == "auto":
        return auto_device(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DatasetError(f"device={name}: no CUDA device is available here (device=cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise DatasetError(f"device={name!r}: valid choices are auto, cpu, cuda, cuda:N")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict(model: torch.nn.Module, item: Mapping[str, Any], device: torch.device, amp: Any) -> dict[str, Any]:
    """One image (uint8 HWC, test-time resized) -> the model's post-processed output at its original size."""
    image = torch.from_numpy(np.array(item["image"])).to(device).permute(2, 0, 1)[None].float()
    with torch.inference_mode(), amp:
        return model(image, output_sizes=[tuple(item["orig_size"])])[0]


@dataclass
class Clock:
    """Per-iteration seconds of each phase, and the number of warm-up iterations left out."""

    warmup: int
    phases: dict[str, list[float]] = field(default_factory=lambda: {"data": [], "compute": [], "evaluate": []})

    def add(self, **seconds: float) -> None:
        for k, v in seconds.items():
            self.phases[k].append(v)

    def summary(self) -> dict[str, Any]:
        n = len(self.phases["compute"])
        skip = min(self.warmup, max(n - 1, 0))
        timed = {k: v[skip:] for k, v in self.phases.items()}
        per = {k: sum(v) / len(v) if v else float("nan") for k, v in timed.items()}
        total = per["data"] + per["compute"] + per["evaluate"]
        spread = sorted(timed["compute"])
        return {"images": n, "warmup_images": skip, "timed_images": n - skip,
                "compute_s_min": spread[0] if spread else float("nan"),
                "compute_s_p50": spread[len(spread) // 2] if spread else float("nan"),
                "compute_s_max": spread[-1] if spread else float("nan"),
                "s_per_img": total, "compute_s_per_img": per["compute"], "data_s_per_img": per["data"],
                "evaluate_s_per_img": per["evaluate"], "fps": 1 / total if total else float("nan"),
                "compute_fps": 1 / per["compute"] if per["compute"] else float("nan")}


def run_dataset(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], evaluators: Sequence[Any],
                device: torch.device, amp_factory: Callable[[], Any], warmup: int, total: int) -> Clock:
    """Every image through the model and the evaluators, with a progress bar (images/s, ETA)."""
    from tqdm import tqdm

    clock = Clock(warmup)
    bar = tqdm(total=total, desc="evaluate", unit="img", file=sys.stderr, dynamic_ncols=True)
    t_data = time.perf_counter()
    for item in batches:
        t0 = time.perf_counter()
        synchronize(device)
        t1 = time.perf_counter()
        out = predict(model, item, device, amp_factory())
        synchronize(device)
        t2 = time.perf_counter()
        for ev in evaluators:
            ev.process(item, out)
        t3 = time.perf_counter()
        clock.add(data=t0 - t_data, compute=t2 - t1, evaluate=t3 - t2)
        bar.update(1)
        t_data = time.perf_counter()
    bar.close()
    return clock


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak CUDA memory allocated (MB), or on CPU the process's peak resident set (MB, a different quantity)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_memory_kind": "CUDA memory allocated by tensors"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mb": rss_kb / 1024, "peak_memory_kind": "process peak resident set (CPU)"}


def write_json(path: Any, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
