"""Panoptic quality (PQ, SQ, RQ) with the official COCO panoptic evaluator's semantics, in memory.

The rules are those of panopticapi's ``pq_compute_single_core`` (what detectron2's
``COCOPanopticEvaluator`` runs for Mask2Former on COCO, ADE20K and Cityscapes):

- id 0 is VOID in ground truth and prediction; a prediction id missing from its segment list, or a
  listed segment missing from the id map, is an error;
- a prediction and a non-crowd ground-truth segment of the same category match when
  IoU = inter / (pred_area + gt_area - inter - |pred on GT VOID|) > 0.5 (the ground-truth area is the
  one its annotation states);
- every unmatched non-crowd ground-truth segment is a false negative; crowd never is;
- an unmatched prediction is a false positive unless more than half of it lies on GT VOID plus the
  crowd region of its category (the last crowd segment of that category listed in the annotation);
- per-category PQ/SQ/RQ are averaged over the categories with tp + fp + fn > 0, for All, Things
  (``isthing``) and Stuff.

Unlike the official code, which divides by zero, an empty split reports NaN with ``n = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VOID = 0
OFFSET = 256 * 256 * 256
DEFINITION = "panopticapi pq_compute semantics (VOID=0, crowd, IoU > 0.5), in-process port"


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG (H, W, 3): R + 256 G + 256^2 B."""
    color = np.asarray(color, dtype=np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """The inverse of ``rgb2id``: (H, W, 3) uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


@dataclass
class CategoryStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PanopticQuality:
    """Accumulates per-category statistics over images; ``compute`` gives PQ/SQ/RQ in percent."""

    categories: Mapping[int, Mapping[str, Any]]  # dataset category id -> {"isthing": 0|1, ...}
    stats: dict[int, CategoryStat] = field(default_factory=dict)
    images: int = 0

    @classmethod
    def from_categories(cls, categories: Iterable[Mapping[str, Any]]) -> PanopticQuality:
        """From a COCO panoptic JSON's ``categories`` list."""
        return cls({int(c["id"]): dict(c) for c in categories})

    def _stat(self, category: int) -> CategoryStat:
        return self.stats.setdefault(category, CategoryStat())

    def update(self, gt: np.ndarray, gt_segments: Sequence[Mapping[str, Any]], pred: np.ndarray,
               pred_segments: Sequence[Mapping[str, Any]], image: Any = None) -> None:
        """Add one image: ``gt``/``pred`` are (H, W) segment-id maps, ``*_segments`` their annotation
        lists (``id``, ``category_id``; ground truth also ``area`` and ``iscrowd``)."""
        gt, pred = np.asarray(gt, dtype=np.int64), np.asarray(pred, dtype=np.int64)
        if gt.shape != pred.shape:
            raise ValueError(f"image {image}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
        gt_segms = {int(s["id"]): s for s in gt_segments}
        pred_area = self._pred_areas(pred, pred_segments, image)
        pred_cat = {int(s["id"]): int(s["category_id"]) for s in pred_segments}
        pairs, counts = np.unique(gt * OFFSET + pred, return_counts=True)
        inter = {(int(p // OFFSET), int(p % OFFSET)): int(n) for p, n in zip(pairs, counts, strict=True)}
        gt_matched, pred_matched = set(), set()
        for (g, p), n in inter.items():
            if g not in gt_segms or p not in pred_cat:
                continue
            gs = gt_segms[g]
            if gs["iscrowd"] == 1 or int(gs["category_id"]) != pred_cat[p]:
                continue
            iou = n / (pred_area[p] + gs["area"] - n - inter.get((VOID, p), 0))
            if iou > 0.5:
                stat = self._stat(pred_cat[p])
                stat.tp += 1
                stat.iou += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd: dict[int, int] = {}
        for g, gs in gt_segms.items():
            if g in gt_matched:
                continue
            if gs["iscrowd"] == 1:
                crowd[int(gs["category_id"])] = g  # the last crowd segment of a category, as the official code
                continue
            self._stat(int(gs["category_id"])).fn += 1
        for p, cat in pred_cat.items():
            if p in pred_matched:
                continue
            ignored = inter.get((VOID, p), 0)
            if cat in crowd:
                ignored += inter.get((crowd[cat], p), 0)
            if ignored / pred_area[p] > 0.5:
                continue
            self._stat(cat).fp += 1
        self.images += 1

    def _pred_areas(self, pred: np.ndarray, segments: Sequence[Mapping[str, Any]], image: Any) -> dict[int, int]:
        """Each listed prediction segment's pixel count; the official checks on ids and categories."""
        listed = {int(s["id"]): int(s["category_id"]) for s in segments}
        if len(listed) != len(segments):
            raise ValueError(f"image {image}: duplicate segment ids in the prediction's segment list")
        ids, counts = np.unique(pred, return_counts=True)
        areas = {}
        for i, n in zip(ids.tolist(), counts.tolist(), strict=True):
            if i not in listed:
                if i == VOID:
                    continue
                raise ValueError(f"image {image}: segment id {i} is in the prediction map but not in its segment list")
            if listed[i] not in self.categories:
                raise ValueError(f"image {image}: segment {i} has category {listed[i]}, which the ground truth's "
                                 "categories do not have")
            areas[i] = n
        missing = sorted(set(listed) - set(areas))
        if missing:
            raise ValueError(f"image {image}: segment ids {missing} are in the segment list but not in the map")
        return areas

    def average(self, isthing: bool | None) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """(PQ, SQ, RQ in percent and n) over the categories with tp + fp + fn > 0 of a split
        (``isthing`` None: all), and the per-category values (fractions, as the official code)."""
        totals, per_class = {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0}, {}
        n = 0
        for cat, info in self.categories.items():
            if isthing is not None and (info.get("isthing") == 1) != isthing:
                continue
            s = self.stats.get(cat, CategoryStat())
            if s.tp + s.fp + s.fn == 0:
                per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            one = {"pq": s.iou / denom, "sq": s.iou / s.tp if s.tp else 0.0, "rq": s.tp / denom}
            per_class[cat] = one
            for key in totals:
                totals[key] += one[key.lower()]
        out = {k: 100 * v / n if n else math.nan for k, v in totals.items()}
        out["n"] = n
        return out, per_class

    def compute(self) -> dict[str, Any]:
        """``{"All"|"Things"|"Stuff": {"PQ", "SQ", "RQ", "n"}, "per_class": {id: {...}}, "images"}``."""
        out: dict[str, Any] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self.average(isthing)
            if isthing is None:
                out["per_class"] = per_class
        out["images"] = self.images
        return out
