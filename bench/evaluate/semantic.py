"""Semantic segmentation metrics from one dataset-level confusion matrix, as detectron2's
``SemSegEvaluator`` computes them.

Ground-truth pixels equal to ``ignore_label`` go to an extra row/column and are left out, predictions
on them included. ``mIoU`` is the detectron2 v0.6 definition that Mask2Former and PRO-SCALE
reported (they pin detectron2 0.6): the sum of the IoUs of classes present in the ground truth,
divided by the number of classes present in the ground truth *or* the prediction, so a class that
is predicted but absent from the ground truth counts as 0. ``mIoU_head`` is the later detectron2
definition (the mean over classes present in the ground truth with a non-empty union). On a full
COCO, ADE20K or Cityscapes validation set every class has ground truth and the two agree; on
subsets they can differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFINITION = "detectron2 v0.6 SemSegEvaluator (dataset-level confusion matrix; mIoU over GT-or-prediction classes)"


@dataclass
class SemanticConfusion:
    """A (K+1) x (K+1) confusion matrix, rows = prediction, columns = ground truth; index K = ignored."""

    num_classes: int
    ignore_label: int = 255
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` in [0, K), ``gt`` in [0, K) or ``ignore_label``; both (H, W)."""
        pred, gt = np.asarray(pred, dtype=np.int64), np.asarray(gt, dtype=np.int64).copy()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        k = self.num_classes
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted classes must be in [0, {k}); got {pred.min()}..{pred.max()}")
        gt[gt == self.ignore_label] = k
        if gt.size and (gt.min() < 0 or gt.max() > k):
            raise ValueError(f"ground-truth classes must be in [0, {k}) or {self.ignore_label}")
        self.matrix += np.bincount((k + 1) * pred.ravel() + gt.ravel(),
                                   minlength=self.matrix.size).reshape(self.matrix.shape)

    def compute(self) -> dict[str, Any]:
        """mIoU (v0.6), mIoU_head, fwIoU, mACC, pACC in percent, and per-class IoU/ACC (NaN: no ground truth)."""
        cm = self.matrix.astype(np.float64)
        tp = cm.diagonal()[:-1]
        pos_gt = cm[:-1, :-1].sum(axis=0)
        pos_pred = cm[:-1, :-1].sum(axis=1)
        union = pos_gt + pos_pred - tp
        has_gt = pos_gt > 0
        acc = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        acc[has_gt] = tp[has_gt] / pos_gt[has_gt]
        iou[has_gt] = tp[has_gt] / union[has_gt]
        weights = pos_gt / pos_gt.sum() if pos_gt.sum() else pos_gt
        head = has_gt & (union > 0)
        seen = (pos_gt + pos_pred) > 0
        return {
            "mIoU": 100 * float(iou[has_gt].sum() / seen.sum()) if seen.any() else float("nan"),
            "mIoU_head": 100 * float(iou[head].mean()) if head.any() else float("nan"),
            "fwIoU": 100 * float((iou[has_gt] * weights[has_gt]).sum()),
            "mACC": 100 * float(acc[has_gt].mean()) if has_gt.any() else float("nan"),
            "pACC": 100 * float(tp.sum() / pos_gt.sum()) if pos_gt.sum() else float("nan"),
            "IoU": (100 * iou).tolist(),
            "ACC": (100 * acc).tolist(),
        }
