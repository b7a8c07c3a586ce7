"""``python -m bench.evaluate``: accuracy on a standard dataset (a Hydra app, config ``conf/evaluate.yaml``).

Evaluation mode: ``python -m bench.evaluate checkpoint=PATH data=coco_panoptic data.root=DIR [limit=N]
[device=...] [precision=...] [msda_backend=...] [out_dir=DIR]`` runs an official checkpoint over the
dataset and writes ``metrics.json``, ``timing.json``, ``load_report.json`` and ``accuracy.json``
(bench/evaluate/run.py). Scoring mode: ``python -m bench.evaluate predictions=PRED.json
data=coco_panoptic data.root=DIR [limit=N] [out_dir=DIR]`` scores official-format COCO panoptic
predictions with the official evaluator's PQ semantics and writes ``metrics.json``. Exit status: 0
ok, 2 bad input or a checkpoint that does not fit (the reason on stderr).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from bench.evaluate.datasets import CocoPanoptic, DatasetError, PanopticPredictions, pairs
from bench.evaluate.evaluators import versions
from bench.evaluate.inference import write_json
from bench.evaluate.panoptic import DEFINITION, PanopticQuality


def score_panoptic(cfg: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's content for ``predictions=`` on ``data``."""
    from tqdm import tqdm

    data = cfg["data"]
    if not data.get("panoptic_json"):
        raise DatasetError(f"scoring panoptic predictions needs a panoptic dataset; data={data.get('name')} has no "
                           "panoptic ground truth (coco_panoptic, cityscapes and ade20k have)")
    gt = CocoPanoptic.from_config(data)
    engine = PanopticQuality.from_categories(gt.load()["categories"])
    preds = PanopticPredictions(Path(cfg["predictions"]))
    t0 = time.perf_counter()
    bar = tqdm(pairs(gt, preds, cfg.get("limit")), desc="PQ", unit="img", file=sys.stderr, dynamic_ncols=True)
    for image_id, (gt_ids, gt_segments), (pred_ids, pred_segments) in bar:
        try:
            engine.update(gt_ids, gt_segments, pred_ids, pred_segments, image=image_id)
        except ValueError as err:
            raise DatasetError(str(err)) from None
    seconds = time.perf_counter() - t0
    result = engine.compute()
    per_class = result.pop("per_class")
    images = result.pop("images")
    return {"panoptic": result, "panoptic_per_class": {str(k): v for k, v in per_class.items()},
            "images": images, "seconds": seconds, "dataset": data["name"], "split": data.get("split"),
            "limit": cfg.get("limit"), "predictions": str(Path(cfg["predictions"]).resolve()),
            "definitions": {"panoptic": DEFINITION}, "versions": versions()}


def run(cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Validate the request, then score predictions or evaluate a checkpoint; ``DatasetError`` for bad input."""
    limit = cfg.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DatasetError(f"limit={limit!r} must be a positive integer")
    if cfg.get("checkpoint") and cfg.get("predictions"):
        raise DatasetError("give either checkpoint= (run a model) or predictions= (score its predictions), not both")
    if cfg.get("checkpoint"):
        from bench.evaluate.run import evaluate_checkpoint

        return evaluate_checkpoint(cfg, out_dir)
    if not cfg.get("predictions"):
        raise DatasetError("nothing to evaluate: give checkpoint=PATH (.pkl/.pth, or random) or "
                           "predictions=PRED.json (COCO panoptic results, PNGs in PRED/)")
    metrics = score_panoptic(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def headline(metrics: dict[str, Any]) -> str:
    """One line of the main numbers."""
    parts = []
    if "panoptic" in metrics:
        pq = metrics["panoptic"]
        parts.append(f"PQ {pq['All']['PQ']:.3f}  SQ {pq['All']['SQ']:.3f}  RQ {pq['All']['RQ']:.3f}  "
                     f"(things {pq['Things']['PQ']:.3f}, stuff {pq['Stuff']['PQ']:.3f})")
    if "semantic" in metrics:
        parts.append(f"mIoU {metrics['semantic']['mIoU']:.3f}")
    if "instance" in metrics:
        parts.append(f"mask AP {metrics['instance']['AP']:.3f}")
    return "  ".join(parts) + f"  ({metrics['images']} images)"


@hydra.main(config_path="../../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from models.checkpoints import CheckpointError

    plain = OmegaConf.to_container(cfg, resolve=True)
    out_dir = Path(plain["out_dir"]) if plain.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(plain, out_dir)
    except (DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{headline(metrics)} -> {out_dir / 'metrics.json'}")


if __name__ == "__main__":
    main()
