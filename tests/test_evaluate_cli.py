"""``python -m bench.evaluate predictions=...``: official-format predictions scored on a dataset in the
standard layout (built here from the real COCO panoptic sample), equal to the official evaluator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.evaluate.panoptic import id2rgb, rgb2id
from tests.test_metrics_panoptic import SAMPLE, official, perturb

Image = pytest.importorskip("PIL.Image")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The sample in detectron2's layout: val2017/, annotations/panoptic_val2017.json, panoptic_val2017/."""
    if not (SAMPLE / "panoptic_examples.json").exists():
        pytest.skip(f"the COCO panoptic sample is absent ({SAMPLE}): it ships beside the project, in shared/data")
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    shutil.copy(SAMPLE / "panoptic_examples.json", root / "annotations" / "panoptic_val2017.json")
    shutil.copytree(SAMPLE / "panoptic_examples", root / "panoptic_val2017")
    shutil.copytree(SAMPLE / "input_images", root / "val2017")
    return root


def write_predictions(root: Path, out: Path, case: str) -> tuple[Path, dict]:
    """A perturbed copy of the ground truth in the official results format: PRED.json + PRED/."""
    gt = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    (out / "pred").mkdir(parents=True)
    annotations, preds = [], {}
    for ann in gt["annotations"]:
        ids = rgb2id(np.array(Image.open(root / "panoptic_val2017" / ann["file_name"])))
        pred, segs = perturb(case, ids, ann["segments_info"], gt["categories"])
        Image.fromarray(id2rgb(pred)).save(out / "pred" / ann["file_name"])
        annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segs})
        preds[ann["image_id"]] = (pred, segs)
    (out / "pred.json").write_text(json.dumps({"annotations": annotations}))
    return out / "pred.json", preds


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.evaluate", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_scoring_predictions_equals_the_official_evaluator(coco, tmp_path):
    pred_json, preds = write_predictions(coco, tmp_path, "void_strip")
    done = evaluate(f"predictions={pred_json}", "data=coco_panoptic", f"data.root={coco}",
                    f"out_dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    gt = json.loads((coco / "annotations" / "panoptic_val2017.json").read_text())
    ref = official(gt, preds, tmp_path / "official")
    for split in ("All", "Things", "Stuff"):
        for key in ("PQ", "SQ", "RQ"):
            assert metrics["panoptic"][split][key] == pytest.approx(100 * ref[split][0][key.lower()], abs=1e-9)
        assert metrics["panoptic"][split]["n"] == ref[split][0]["n"]
    assert metrics["images"] == 2 and "panopticapi" in metrics["definitions"]["panoptic"]
    assert metrics["versions"]["numpy"] == np.__version__
    assert f"PQ {metrics['panoptic']['All']['PQ']:.3f}" in done.stdout


def test_ground_truth_as_prediction_scores_100_and_limit_scores_a_subset(coco, tmp_path):
    pred_json, _ = write_predictions(coco, tmp_path, "identical")
    done = evaluate(f"predictions={pred_json}", f"data.root={coco}", "limit=1", f"out_dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["images"] == 1 and metrics["limit"] == 1
    assert metrics["panoptic"]["All"]["PQ"] == metrics["panoptic"]["All"]["RQ"] == 100


@pytest.mark.parametrize("make_args,message", [
    (lambda c, p: [f"predictions={p}"], "data.root is not set"),
    (lambda c, p: [f"predictions={p}", f"data.root={c}/nope"], "the dataset folder (data.root) not found"),
    (lambda c, p: [f"predictions={p}", f"data.root={c}", "data.split=val2099"],
     "the panoptic ground-truth JSON not found: expected"),
    (lambda c, p: [f"predictions={p.with_name('none.json')}", f"data.root={c}"], "the predictions JSON not found"),
    (lambda c, p: [f"data.root={c}"], "nothing to evaluate: give checkpoint=PATH"),
    (lambda c, p: [f"predictions={p}", f"data.root={c}", "limit=0"], "limit=0 must be a positive integer"),
    (lambda c, p: [f"predictions={p}", f"data.root={c}", "checkpoint=model.pkl"], "give either checkpoint="),
    (lambda c, p: [f"data.root={c}", "checkpoint=missing.pkl"], "checkpoint not found: missing.pkl"),
    (lambda c, p: [f"data.root={c}", "checkpoint=random", "precision=fp8"], "precision='fp8': valid choices"),
])
def test_bad_input_is_a_clear_error(coco, tmp_path, make_args, message):
    pred_json, _ = write_predictions(coco, tmp_path, "identical")
    done = evaluate(*make_args(coco, pred_json), f"out_dir={tmp_path / 'out'}")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_prediction_png_that_disagrees_with_its_json_is_named(coco, tmp_path):
    pred_json, _ = write_predictions(coco, tmp_path, "identical")
    data = json.loads(pred_json.read_text())
    data["annotations"][0]["segments_info"].pop()  # a segment in the PNG, not in the JSON
    pred_json.write_text(json.dumps(data))
    done = evaluate(f"predictions={pred_json}", f"data.root={coco}", f"out_dir={tmp_path / 'out'}")
    assert done.returncode == 2 and "is in the prediction map but not in its segment list" in done.stderr
