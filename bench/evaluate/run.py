"""``checkpoint=`` evaluation: build the checkpoint's model, run it over the dataset, score it, and write
``metrics.json``, ``timing.json``, ``load_report.json`` and ``accuracy.json`` (the measured-accuracy
row, also stored in a results store with ``results=DIR``)."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.evaluate import evaluators as ev
from bench.evaluate.datasets import DatasetError
from bench.evaluate.images import EvalDataset, loader, open_dataset
from bench.evaluate.inference import build, device_of, peak_memory, run_dataset, write_json

PRECISIONS = ("fp32", "tf32", "bf16")
BACKENDS = ("pytorch", "triton", "auto")


def check(cfg: dict[str, Any]) -> None:
    """Clear errors for settings that cannot work, naming the valid choices."""
    if cfg["precision"] not in PRECISIONS:
        raise DatasetError(f"precision={cfg['precision']!r}: valid choices are {list(PRECISIONS)}")
    if cfg["msda_backend"] not in BACKENDS:
        raise DatasetError(f"msda_backend={cfg['msda_backend']!r}: valid choices are {list(BACKENDS)}")
    if not isinstance(cfg.get("workers"), int) or cfg["workers"] < 0:
        raise DatasetError(f"workers={cfg.get('workers')!r} must be an integer >= 0")
    if not isinstance(cfg.get("model"), list):
        raise DatasetError(f"model={cfg.get('model')!r} must be a list of overrides, e.g. "
                           "'model=[\"encoder.residual=true\"]'")


def make_evaluators(dataset: EvalDataset, data: dict[str, Any], dump: Path | None
                    ) -> tuple[list[Any], dict[str, str]]:
    """The evaluators of the dataset's tasks, and the tasks skipped with the reason."""
    out, skipped = [], {}
    for task in data.get("tasks", []):
        if task == "panoptic":
            out.append(ev.PanopticEvaluator(dataset.categories, dataset.raw_categories, dump))
        elif task == "semantic":
            out.append(ev.SemanticEvaluator(dataset.categories))
        elif task == "instance":
            path = Path(data["instances_json"]) if data.get("instances_json") else None
            if path is None or not path.exists():
                skipped["instance"] = f"no instances JSON (expected {path}); mask AP needs it"
            else:
                out.append(ev.InstanceEvaluator(dataset.categories, path, dump))
        else:
            raise DatasetError(f"data.tasks: unknown task {task!r}; valid: panoptic, semantic, instance")
    if not out:
        raise DatasetError(f"data={data['name']}: nothing to score ({skipped or 'no tasks'})")
    return out, skipped


def fit(model: Any, dataset: EvalDataset, tasks: list[str]) -> None:
    """The model's classes must be the dataset's; its post-processor takes the dataset's thing classes and
    also runs the tasks the dataset scores."""
    from models.postprocess import TASKS

    post = model.postprocessor
    if post.num_classes != len(dataset.categories):
        raise DatasetError(f"the model predicts {post.num_classes} classes but data={dataset.name} has "
                           f"{len(dataset.categories)}: evaluate it on the dataset it was trained for")
    post.thing_ids = frozenset(dataset.categories.thing_classes)
    post.tasks = tuple(t for t in TASKS if t in post.tasks or t in tasks)


def evaluate_checkpoint(cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The whole evaluation; returns metrics.json's content."""
    check(cfg)
    data = cfg["data"]
    dataset = open_dataset(data)
    device = device_of(str(cfg["device"]))
    built = build(str(cfg["checkpoint"]), [str(o) for o in cfg["model"]], str(data["input"]), cfg["msda_backend"])
    announce(built.report)
    fit(built.model, dataset, list(data.get("tasks", [])))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "load_report.json", built.report)
    dump = out_dir / "predictions" if cfg.get("dump_predictions") else None
    evaluators, skipped = make_evaluators(dataset, data, dump)
    metrics, timing = score(built.model.to(device), dataset, evaluators, device, cfg)
    write_json(out_dir / "timing.json", timing)
    metrics.update(describe(cfg, built, timing["images"], device, evaluators, skipped))
    write_json(out_dir / "metrics.json", metrics)
    row = accuracy_row(metrics, timing, data)
    write_json(out_dir / "accuracy.json", row)
    if cfg.get("results") and row["checkpoint_sha256"] is None:
        print("random weights: no accuracy row goes into the store (it would stand for a model's accuracy)",
              file=sys.stderr)
    elif cfg.get("results"):
        store_row(Path(cfg["results"]), row)
    return metrics


def announce(report: dict[str, Any]) -> None:
    """What the checkpoint said, what the user said, and what neither could say."""
    print(f"inferred from the checkpoint: {' '.join(report['inferred'])}", file=sys.stderr)
    print(f"your overrides: {' '.join(report['yours']) or '(none)'}", file=sys.stderr)
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    fixed = " ".join(f"{k}={v}" for k, v in report["defaults_not_inferable"].items())
    print(f"not inferable, used as configured: {fixed}", file=sys.stderr)


def score(model: Any, dataset: EvalDataset, evaluators: list[Any], device: Any, cfg: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the dataset through the model and the evaluators: (metrics, timing.json's content)."""
    import torch

    from bench.env import cpu_name
    from bench.runners import precision_context

    limit = cfg.get("limit")
    n = min(limit, len(dataset)) if limit else len(dataset)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    clock = run_dataset(model, loader(dataset, limit, cfg["workers"]), evaluators, device,
                        lambda: precision_context(cfg["precision"], device), cfg["warmup"], n)
    wall = time.perf_counter() - t0
    metrics: dict[str, Any] = {}
    for e in evaluators:
        metrics.update(e.compute())
    timing = {**clock.summary(), "wall_s": wall, "metric_compute_s": time.perf_counter() - t0 - wall,
              "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
              "precision": cfg["precision"], "msda_backend": cfg["msda_backend"], "workers": cfg["workers"],
              "torch_threads": torch.get_num_threads(), **peak_memory(device),
              "convention": "detectron2 inference_on_dataset: batch 1, warm-up left out, synchronised, "
                            "post-processing inside the model call; s_per_img = data + compute + evaluate"}
    return metrics, timing


def describe(cfg: dict[str, Any], built: Any, images: int, device: Any, evaluators: list[Any],
             skipped: dict[str, str]) -> dict[str, Any]:
    """metrics.json's account of what was evaluated, how, and by which definitions."""
    from models.encoders import variant_name

    data, encoder = cfg["data"], built.config["encoder"]
    return {
        "images": images, "limit": cfg.get("limit"), "dataset": data["name"], "split": data.get("split"),
        "checkpoint": built.report.get("path"), "checkpoint_sha256": built.report.get("sha256"),
        "model": {"backbone": built.config["backbone"]["name"], "encoder": encoder["name"],
                  "variant": variant_name(encoder), "overrides": built.report["overrides"],
                  "defaults_not_inferable": built.report["defaults_not_inferable"]},
        "execution": {"device": str(device), "precision": cfg["precision"], "msda_backend": cfg["msda_backend"],
                      "force_fp32": encoder.get("force_fp32")},
        "test_size": {"min_size": data.get("min_size"), "max_size": data.get("max_size")},
        "not_computed": skipped, "definitions": definitions(evaluators), "versions": ev.versions()}


def definitions(evaluators: list[Any]) -> dict[str, str]:
    from bench.evaluate import instance, panoptic, semantic

    known = {"panoptic": panoptic.DEFINITION, "semantic": semantic.DEFINITION}
    return {e.task: known.get(e.task) or instance.definition() for e in evaluators}


HEADLINE = {"panoptic": ("PQ", lambda m: m["panoptic"]["All"]["PQ"]),
            "semantic": ("mIoU", lambda m: m["semantic"]["mIoU"]),
            "instance": ("AP", lambda m: m["instance"]["AP"])}


def accuracy_row(metrics: dict[str, Any], timing: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The measured-accuracy row: what was evaluated, how, and its headline metrics."""
    import uuid

    from bench.fingerprint import code_fingerprint

    ex, model = metrics["execution"], metrics["model"]
    values = {name: get(metrics) for task, (name, get) in HEADLINE.items() if task in metrics}
    if "panoptic" in metrics:
        values.update(PQ_th=metrics["panoptic"]["Things"]["PQ"], PQ_st=metrics["panoptic"]["Stuff"]["PQ"])
    key = "|".join(str(x) for x in (metrics["checkpoint_sha256"] or metrics["checkpoint"], metrics["dataset"],
                                     metrics["split"], metrics["limit"], ex["device"].split(":")[0], ex["precision"],
                                     ex["msda_backend"], ex["force_fp32"]))
    return {"run_id": uuid.uuid4().hex, "key": key, "created_at": datetime.now(timezone.utc).isoformat(),
            "dataset": data["input"], "data": data["name"], "split": metrics["split"], "images": metrics["images"],
            "limit": metrics["limit"], "backbone": model["backbone"], "variant": model["variant"],
            "encoder": model["encoder"], "checkpoint": metrics["checkpoint"],
            "checkpoint_sha256": metrics["checkpoint_sha256"], **ex, **values,
            "s_per_img": timing["s_per_img"], "compute_s_per_img": timing["compute_s_per_img"],
            "device_name": timing["device_name"], "engine": "; ".join(metrics["definitions"].values()),
            "code_fingerprint": code_fingerprint()}


def store_row(results: Path, row: dict[str, Any]) -> None:
    """The row into ``results/evaluations/<run_id>.json`` first (a rebuilt store reads it back), then the store."""
    from bench.store import EVALUATIONS, ResultStore

    (results / EVALUATIONS).mkdir(parents=True, exist_ok=True)
    write_json(results / EVALUATIONS / f"{row['run_id']}.json", row)
    with ResultStore(results / "results.sqlite") as store:
        store.add_accuracy(row)
    print(f"accuracy row stored in {results / 'results.sqlite'}", file=sys.stderr)
