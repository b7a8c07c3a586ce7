"""Mask AP with pycocotools' ``COCOeval(iouType="segm")``, as detectron2's ``COCOEvaluator`` with
``use_fast_impl=False`` (and Mask2Former's ``InstanceSegEvaluator``) run it: masks as Fortran-order
uint8 RLE, the ground truth's own ``area`` and ``iscrowd``, maxDets 1/10/100. Box AP is not
reported: Mask2Former predicts no boxes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def definition() -> str:
    from importlib.metadata import version

    return f"pycocotools {version('pycocotools')} COCOeval(iouType='segm'), maxDets [1, 10, 100]"


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A binary (H, W) mask as COCO RLE (``counts`` as str, JSON-ready), as detectron2 encodes it."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.array(np.asarray(mask)[:, :, None], order="F", dtype=np.uint8))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_ap(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent. ``gt`` is a COCO instances dict (``images``,
    ``annotations``, ``categories``); ``detections`` are ``{image_id, category_id, segmentation (RLE),
    score}`` with dataset category ids. No detection gives 0 (as COCOeval on an empty result would not run)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return dict.fromkeys(KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = {k: list(v) for k, v in gt.items() if k in ("images", "annotations", "categories")}
        coco.createIndex()
        results = coco.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco, results, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(100 * v) if v >= 0 else float("nan") for k, v in zip(KEYS, ev.stats[:6], strict=True)}
