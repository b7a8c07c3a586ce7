"""The PQ engine against the official COCO panoptic evaluator (panopticapi) on real COCO ground truth:
ground truth against perturbed copies of itself, every statistic equal to 1e-9."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.evaluate.panoptic import PanopticQuality, id2rgb, rgb2id

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def sample():
    if not (SAMPLE / "panoptic_examples.json").exists():
        pytest.skip(f"the COCO panoptic sample is absent ({SAMPLE}): it ships beside the project, in shared/data")
    gt = json.loads((SAMPLE / "panoptic_examples.json").read_text())
    maps = {a["image_id"]: rgb2id(np.array(Image.open(SAMPLE / "panoptic_examples" / a["file_name"])))
            for a in gt["annotations"]}
    return gt, maps


def keep_present(ids: np.ndarray, segments: list[dict]) -> list[dict]:
    present = set(np.unique(ids).tolist())
    return [s for s in segments if s["id"] in present]


def perturb(case: str, ids: np.ndarray, segments: list[dict], categories: list[dict]) -> tuple[np.ndarray, list]:
    """A prediction made from ground truth: (id map, segment list with id and category_id)."""
    pred = ids.copy()
    segs = [{"id": s["id"], "category_id": s["category_id"]} for s in segments]
    h, w = pred.shape
    if case == "quarter_void":
        pred[: h // 2, : w // 2] = 0
    elif case == "void_strip":
        pred[:, w // 3: w // 3 + 40] = 0
    elif case == "relabel_every_third":  # crowd segments included
        cats = [c["id"] for c in categories]
        for s in segs[::3]:
            s["category_id"] = cats[(cats.index(s["category_id"]) + 1) % len(cats)]
    elif case == "shift":
        pred = np.zeros_like(ids)
        pred[15:, 15:] = ids[:-15, :-15]
    elif case == "split_things":  # the lower half of every thing gets a new id: matches fall below IoU 0.5
        things = {c["id"] for c in categories if c["isthing"]}
        used = set(np.unique(ids).tolist())
        fresh = iter(i for i in range(1, 1 << 24) if i not in used)  # new ids must fit the PNG's 24 bits
        for s in list(segs):
            if s["category_id"] in things:
                rows = np.nonzero((pred == s["id"]).any(axis=1))[0]
                lower = (pred == s["id"]) & (np.arange(h)[:, None] > (rows.min() + rows.max()) // 2)
                new = next(fresh)
                pred[lower] = new
                segs.append({"id": new, "category_id": s["category_id"]})
    elif case != "identical":
        raise ValueError(case)
    return pred, keep_present(pred, segs)


CASES = ["identical", "quarter_void", "void_strip", "relabel_every_third", "shift", "split_things"]


def official(gt: dict, preds: dict, tmp_path: Path) -> dict:
    """panopticapi's own evaluation of the predictions, through PNG files as it reads them."""
    evaluation = pytest.importorskip("panopticapi.evaluation",
                                     reason="panopticapi-lite (the official evaluator) is not installed")
    folder = tmp_path / "pred"
    folder.mkdir(parents=True)
    pairs = []
    for ann in gt["annotations"]:
        ids, segs = preds[ann["image_id"]]
        Image.fromarray(id2rgb(ids)).save(folder / ann["file_name"])
        pairs.append((ann, {"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segs}))
    categories = {c["id"]: c for c in gt["categories"]}
    stat = evaluation.pq_compute_single_core(0, pairs, str(SAMPLE / "panoptic_examples"), str(folder), categories)
    return {name: stat.pq_average(categories, isthing=isthing)
            for name, isthing in (("All", None), ("Things", True), ("Stuff", False))}


@pytest.mark.parametrize("case", CASES)
def test_pq_equals_the_official_evaluator(sample, case, tmp_path):
    gt, maps = sample
    preds = {a["image_id"]: perturb(case, maps[a["image_id"]], a["segments_info"], gt["categories"])
             for a in gt["annotations"]}
    engine = PanopticQuality.from_categories(gt["categories"])
    for ann in gt["annotations"]:
        engine.update(maps[ann["image_id"]], ann["segments_info"], *preds[ann["image_id"]], image=ann["image_id"])
    ours, ref = engine.compute(), official(gt, preds, tmp_path)
    for split in ("All", "Things", "Stuff"):
        (totals, per_class) = ref[split]
        assert ours[split]["n"] == totals["n"]
        for key in ("PQ", "SQ", "RQ"):
            assert ours[split][key] == pytest.approx(100 * totals[key.lower()], abs=1e-9), (split, key)
    for cat, values in ref["All"][1].items():
        for key, v in values.items():
            assert ours["per_class"][cat][key] == pytest.approx(v, abs=1e-9)
    if case == "identical":
        assert ours["All"]["PQ"] == ours["All"]["SQ"] == ours["All"]["RQ"] == 100
    else:
        assert ours["All"]["PQ"] < 100  # every perturbation costs something


def test_the_quarter_void_case_gives_the_published_comparison(sample):
    """The official evaluator's values for a prediction whose top-left quarter is VOID, as compared
    across panopticapi, torchmetrics and hotcoco: 80.921 / 88.950 / 86.765 (torchmetrics reads 100)."""
    gt, maps = sample
    engine = PanopticQuality.from_categories(gt["categories"])
    for ann in gt["annotations"]:
        ids = maps[ann["image_id"]]
        engine.update(ids, ann["segments_info"], *perturb("quarter_void", ids, ann["segments_info"], gt["categories"]))
    pq = engine.compute()["All"]
    assert (round(pq["PQ"], 3), round(pq["SQ"], 3), round(pq["RQ"], 3)) == (80.921, 88.950, 86.765)


def test_crowd_and_void_forgive_a_false_positive_but_only_above_half():
    cats = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 0}]
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5] = 7  # a crowd region of category 1 on the left; the right half is VOID
    gt_segments = [{"id": 7, "category_id": 1, "iscrowd": 1, "area": 50}]
    for cols, expect_fp in ((slice(0, 6), 0), (slice(4, 10), 0), (slice(0, 4), 0)):
        pred = np.zeros_like(gt)
        pred[:, cols] = 3
        engine = PanopticQuality.from_categories(cats)
        engine.update(gt, gt_segments, pred, [{"id": 3, "category_id": 1}])
        assert engine.stats.get(1) is None or engine.stats[1].fp == expect_fp
    # a category-2 prediction on the crowd of category 1 is not forgiven by that crowd
    pred = np.zeros_like(gt)
    pred[:, :4] = 3
    engine = PanopticQuality.from_categories(cats)
    engine.update(gt, gt_segments, pred, [{"id": 3, "category_id": 2}])
    assert engine.stats[2].fp == 1
    assert math.isnan(engine.compute()["Things"]["PQ"]) and engine.compute()["Things"]["n"] == 0


@pytest.mark.parametrize("segments,message", [
    ([], "segment id 3 is in the prediction map but not in its segment list"),
    ([{"id": 3, "category_id": 1}, {"id": 4, "category_id": 1}], r"segment ids \[4\] are in the segment list"),
    ([{"id": 3, "category_id": 99}], "category 99"),
])
def test_inconsistent_predictions_are_refused_as_the_official_evaluator_does(segments, message):
    engine = PanopticQuality.from_categories([{"id": 1, "isthing": 1}])
    pred = np.full((4, 4), 3)
    with pytest.raises(ValueError, match=message):
        engine.update(np.zeros((4, 4)), [], pred, segments)


def test_rgb_ids_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 16777215, 4260062]])
    assert (rgb2id(id2rgb(ids)) == ids).all()
