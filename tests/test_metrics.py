"""mIoU (detectron2 v0.6 and later definitions) and mask AP (pycocotools) on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.evaluate.semantic import SemanticConfusion


def test_miou_counts_a_class_predicted_but_absent_from_the_ground_truth_as_zero():
    gt = np.array([[0, 0, 0, 1], [1, 1, 255, 255]])
    pred = np.array([[0, 0, 1, 1], [1, 2, 2, 0]])  # class 2: predicted once on GT 1, once on an ignored pixel
    cm = SemanticConfusion(num_classes=3)
    cm.update(pred, gt)
    r = cm.compute()
    # IoU_0 = 2 / (3 + 2 - 2) = 2/3 (the prediction on the ignored pixel does not count);
    # IoU_1 = 2 / (3 + 3 - 2) = 1/2; class 2 has no ground truth but a prediction
    assert r["IoU"][0] == pytest.approx(200 / 3) and r["IoU"][1] == pytest.approx(50) and math.isnan(r["IoU"][2])
    assert r["mIoU"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 3)  # v0.6: divided by the 3 classes seen
    assert r["mIoU_head"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)  # later: only classes with ground truth
    assert r["fwIoU"] == pytest.approx(100 * (0.5 * 2 / 3 + 0.5 * 0.5))
    assert r["mACC"] == pytest.approx(100 * 2 / 3) and r["pACC"] == pytest.approx(100 * 4 / 6)


def test_the_confusion_matrix_accumulates_over_images_not_per_image():
    one, two = SemanticConfusion(2), SemanticConfusion(2)
    a_gt, a_pred = np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]])
    b_gt, b_pred = np.array([[1, 1]]), np.array([[1, 0]])
    one.update(a_pred, a_gt)
    one.update(b_pred, b_gt)
    two.update(np.concatenate([a_pred, np.pad(b_pred, ((0, 0), (0, 2)), constant_values=0)], axis=0),
               np.concatenate([a_gt, np.pad(b_gt, ((0, 0), (0, 2)), constant_values=255)], axis=0))
    assert one.compute()["mIoU"] == pytest.approx(two.compute()["mIoU"])
    # dataset level: IoU_0 = 3 / (4 + 4 - 3) = 0.6, IoU_1 = 1 / (2 + 2 - 1) = 1/3
    assert one.compute()["mIoU"] == pytest.approx(100 * (0.6 + 1 / 3) / 2)


@pytest.mark.parametrize("pred,gt,message", [
    (np.array([[3]]), np.array([[0]]), r"predicted classes must be in \[0, 3\)"),
    (np.array([[0]]), np.array([[7]]), "ground-truth classes"),
    (np.array([[0, 0]]), np.array([[0]]), "differ in size"),
])
def test_bad_semantic_input_is_refused(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        SemanticConfusion(3).update(pred, gt)


def square(h: int, w: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[top:bottom, left:right] = 1
    return m


def test_mask_ap_on_a_hand_computed_case():
    pytest.importorskip("pycocotools", reason="pycocotools is not installed")
    from bench.evaluate.instance import encode, mask_ap

    gt = {"images": [{"id": 1, "height": 20, "width": 20}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "area": 100, "bbox": [0, 0, 10, 10],
                           "iscrowd": 0, "segmentation": encode(square(20, 20, 0, 0, 10, 10))}]}
    hit = {"image_id": 1, "category_id": 1, "segmentation": encode(square(20, 20, 0, 0, 10, 12)), "score": 0.9}
    # IoU 100 / 120 = 0.833 passes the thresholds 0.50 ... 0.80: 7 of 10, each with precision 1
    ap = mask_ap(gt, [hit])
    assert ap["AP"] == pytest.approx(70) and ap["AP50"] == pytest.approx(100) and ap["AP75"] == pytest.approx(100)
    assert ap["APs"] == pytest.approx(70) and math.isnan(ap["APm"]) and math.isnan(ap["APl"])  # area 100 < 32^2
    # a higher-scored miss of the same class halves the precision at every recall; another class's is ignored
    miss = {"image_id": 1, "category_id": 1, "segmentation": encode(square(20, 20, 12, 12, 20, 20)), "score": 0.95}
    other = {**miss, "category_id": 2}
    assert mask_ap(gt, [hit, miss])["AP"] == pytest.approx(35)
    assert mask_ap(gt, [hit, other])["AP"] == pytest.approx(70)
    assert mask_ap(gt, [])["AP"] == 0
