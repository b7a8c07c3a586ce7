"""Per-task evaluators: each takes a model's post-processed output for one image (contiguous classes,
at the image's original size) with that image's ground truth, maps classes to the dataset's category
ids, feeds the metric engine, and optionally writes the predictions in the official formats."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.evaluate import instance, panoptic, semantic
from bench.evaluate.datasets import DatasetError, read_json
from bench.evaluate.images import Categories


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class PanopticEvaluator:
    """PQ / SQ / RQ with the official semantics; dumps ``panoptic_predictions.json`` + PNGs (COCO format)."""

    task = "panoptic"

    def __init__(self, categories: Categories, raw_categories: list[Mapping[str, Any]],
                 dump: Path | None = None) -> None:
        self.categories = categories
        self.engine = panoptic.PanopticQuality.from_categories(raw_categories)
        self.dump, self.annotations = dump, []
        if dump is not None:
            (dump / "panoptic_predictions").mkdir(parents=True, exist_ok=True)
        self.raw_categories = list(raw_categories)

    def segments(self, result: Mapping[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The id map and segments with dataset category ids (no empty segment, as panopticapi requires)."""
        seg, info = result["panoptic_seg"]
        ids = _numpy(seg).astype(np.int32)
        present = set(np.unique(ids).tolist())
        segments = [{"id": int(s["id"]), "category_id": self.categories.ids[int(s["category_id"])],
                     "isthing": bool(s["isthing"])} for s in info if int(s["id"]) in present]
        return ids, segments

    def process(self, item: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        ids, segments = self.segments(result)
        gt_ids, gt_segments = item["panoptic"]
        self.engine.update(gt_ids, gt_segments, ids, segments, image=item["image_id"])
        if self.dump is not None:
            from PIL import Image

            name = f"{Path(item['file_name']).stem}.png"
            Image.fromarray(panoptic.id2rgb(ids)).save(self.dump / "panoptic_predictions" / name)
            self.annotations.append({"image_id": item["image_id"], "file_name": name, "segments_info": segments})

    def compute(self) -> dict[str, Any]:
        result = self.engine.compute()
        per_class = result.pop("per_class")
        result.pop("images", None)
        if self.dump is not None:
            (self.dump / "panoptic_predictions.json").write_text(json.dumps(
                {"annotations": self.annotations, "categories": self.raw_categories}) + "\n")
        return {"panoptic": result, "panoptic_per_class": {str(k): v for k, v in per_class.items()}}


class SemanticEvaluator:
    """mIoU and friends from a dataset-level confusion matrix of the per-pixel argmax."""

    task = "semantic"

    def __init__(self, categories: Categories) -> None:
        self.categories = categories
        self.confusion = semantic.SemanticConfusion(len(categories))

    def process(self, item: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        pred = _numpy(result["sem_seg"].argmax(0))
        self.confusion.update(pred, item["semantic"])

    def compute(self) -> dict[str, Any]:
        out = self.confusion.compute()
        per_class = {name: {"IoU": iou, "ACC": acc}
                     for name, iou, acc in zip(self.categories.names, out.pop("IoU"), out.pop("ACC"), strict=True)}
        return {"semantic": out, "semantic_per_class": per_class}


class InstanceEvaluator:
    """Mask AP with pycocotools on the instances JSON, restricted to the images evaluated; dumps
    ``coco_instances_results.json``."""

    task = "instance"

    def __init__(self, categories: Categories, instances_json: Path, dump: Path | None = None) -> None:
        self.categories = categories
        self.gt = read_json(instances_json, "the instances ground-truth JSON (for mask AP)",
                            ("images", "annotations", "categories"))
        known = {c["id"] for c in self.gt["categories"]}
        unknown = [categories.ids[k] for k in categories.thing_classes if categories.ids[k] not in known]
        if unknown:
            raise DatasetError(f"{instances_json}: thing categories {unknown[:5]} of the panoptic JSON are missing")
        self.dump, self.detections, self.images = dump, [], []

    def process(self, item: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        inst = result["instances"]
        masks, scores, classes = (_numpy(inst[k]) for k in ("pred_masks", "scores", "pred_classes"))
        self.images.append(item["image_id"])
        for mask, score, cls in zip(masks, scores, classes, strict=True):
            self.detections.append({"image_id": item["image_id"], "category_id": self.categories.ids[int(cls)],
                                    "segmentation": instance.encode(mask > 0.5), "score": float(score)})

    def compute(self) -> dict[str, Any]:
        if self.dump is not None:
            (self.dump / "coco_instances_results.json").write_text(json.dumps(self.detections) + "\n")
        seen = set(self.images)
        gt = {"images": [im for im in self.gt["images"] if im["id"] in seen],
              "annotations": [a for a in self.gt["annotations"] if a["image_id"] in seen],
              "categories": self.gt["categories"]}
        return {"instance": instance.mask_ap(gt, self.detections)}


def versions() -> dict[str, str]:
    """The versions of the packages behind the numbers (absent: "-")."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("encbench", "numpy", "pillow", "pycocotools"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out
