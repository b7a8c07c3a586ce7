"""Checkpoint evaluation end to end: the dataset reader and test-time resize, an oracle whose logits are
the ground truth (PQ = mIoU = AP = 100 through the real post-processor, id mapping and metric engines),
a synthesized official checkpoint through ``python -m bench.evaluate``'s own path, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.evaluate.datasets import DatasetError
from bench.evaluate.evaluators import InstanceEvaluator, PanopticEvaluator, SemanticEvaluator
from bench.evaluate.images import Categories, loader, open_dataset, resize_image, resized_shape
from bench.evaluate.inference import Clock, merge_overrides, run_dataset
from models.postprocess import PostProcessor

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"the COCO panoptic sample is absent ({SAMPLE})")


def sample_data(**extra) -> dict:
    """conf/data/coco_panoptic.yaml pointed at the sample's own file names."""
    return {"name": "coco_panoptic", "input": "coco", "root": str(SAMPLE), "split": "val2017",
            "images": str(SAMPLE / "input_images"), "panoptic_json": str(SAMPLE / "panoptic_examples.json"),
            "panoptic_dir": str(SAMPLE / "panoptic_examples"), "instances_json": None, "semantic": "panoptic",
            "semantic_dir": None, "images_by_city": False, "tasks": ["panoptic", "semantic", "instance"],
            "min_size": 800, "max_size": 1333, **extra}


def test_resize_follows_detectron2s_rule():
    assert resized_shape(427, 640, 800, 1333) == (800, 1199)  # 640 * 800 / 427 = 1199.06
    assert resized_shape(360, 640, 800, 1333) == (750, 1333)  # 1422.2 > 1333: 800 * 1333 / 1422.2 = 749.8
    assert resized_shape(1024, 2048, 1024, 2048) == (1024, 2048)
    assert resized_shape(640, 427, 800, 1333) == (1199, 800)  # portrait
    flat = np.full((427, 640, 3), 77, dtype=np.uint8)
    out = resize_image(flat, 800, 1333)
    assert out.shape == (800, 1199, 3) and out.dtype == np.uint8 and (out == 77).all()
    assert resize_image(flat, 0, 0) is flat


@needs_sample
def test_the_reader_gives_images_their_panoptic_and_semantic_truth():
    ds = open_dataset(sample_data())
    assert [r["id"] for r in ds.records] == [142238, 439180] and len(ds.categories) == 133
    item = ds[1]
    assert item["orig_size"] == (360, 640) and item["image"].shape == (750, 1333, 3)
    ids, segments = item["panoptic"]
    assert ids.shape == (360, 640) and len(segments) == 32
    sem = item["semantic"]
    assert ((sem == 255) == (ids == 0)).all()  # every segment is labelled, crowd included; VOID is ignored
    table = ds.categories.lookup()
    for seg in segments:
        assert (sem[ids == seg["id"]] == table[seg["category_id"]]).all()
    assert ds.categories.ids[table[seg["category_id"]]] == seg["category_id"]


def test_a_missing_dataset_says_which_file_was_expected_where(tmp_path):
    with pytest.raises(DatasetError, match="data.root is not set"):
        open_dataset(sample_data(root=None))
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"panoptic ground-truth JSON not found: expected .*nothing\.json"):
        open_dataset(sample_data(root=str(tmp_path), images=str(tmp_path / "images"),
                                 panoptic_json=str(tmp_path / "nothing.json")))
    with pytest.raises(DatasetError, match=r"image folder \(data.images\) not found: expected .*val2017"):
        open_dataset(sample_data(root=str(tmp_path), images=str(tmp_path / "val2017")))


class Oracle(nn.Module):
    """Logits that say the ground truth: one query per segment (its class at +10, the others 0, its mask +10
    inside and -10 outside), the other queries "no object"; the real post-processor turns them into outputs."""

    def __init__(self, dataset, post: PostProcessor) -> None:
        super().__init__()
        self.truth = {tuple(dataset[i]["orig_size"]): dataset[i]["panoptic"] for i in range(len(dataset))}
        self.table, self.postprocessor = dataset.categories.lookup(), post

    def forward(self, images: torch.Tensor, output_sizes):
        ids, segments = self.truth[tuple(output_sizes[0])]
        k = self.postprocessor.num_classes
        logits = torch.zeros(100, k + 1)
        logits[:, k] = 10.0
        masks = torch.full((100, *ids.shape), -10.0)
        for q, seg in enumerate(segments):
            logits[q, k] = 0.0
            logits[q, int(self.table[seg["category_id"]])] = 10.0
            masks[q][torch.from_numpy(ids == seg["id"])] = 10.0
        return self.postprocessor(logits[None], masks[None], ids.shape, [ids.shape], [ids.shape])


def instances_from_panoptic(dataset, path: Path) -> None:
    """A COCO instances JSON with the sample's thing segments (crowd flags and areas included)."""
    from bench.evaluate.instance import encode

    anns, images = [], []
    for i in range(len(dataset)):
        rec, (ids, segments) = dataset.records[i], dataset[i]["panoptic"]
        images.append({"id": rec["id"], "height": ids.shape[0], "width": ids.shape[1]})
        for seg in segments:
            if dataset.categories.isthing[dataset.categories.lookup()[seg["category_id"]]]:
                mask = ids == seg["id"]
                ys, xs = np.nonzero(mask)
                anns.append({"id": len(anns) + 1, "image_id": rec["id"], "category_id": seg["category_id"],
                             "segmentation": encode(mask), "area": int(mask.sum()), "iscrowd": seg["iscrowd"],
                             "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]})
    cats = [{"id": i, "name": n} for i, n, t in zip(dataset.categories.ids, dataset.categories.names,
                                                    dataset.categories.isthing, strict=True) if t]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


@needs_sample
def test_an_oracle_scores_100_on_every_metric_and_its_dump_rescores_the_same(tmp_path):
    from bench.evaluate.__main__ import score_panoptic

    ds = open_dataset(sample_data(min_size=0))
    raw = json.loads((SAMPLE / "panoptic_examples.json").read_text())["categories"]
    instances_from_panoptic(ds, tmp_path / "instances.json")
    post = PostProcessor(133, thing_ids=ds.categories.thing_classes)
    dump = tmp_path / "predictions"
    evaluators = [PanopticEvaluator(ds.categories, raw, dump), SemanticEvaluator(ds.categories),
                  InstanceEvaluator(ds.categories, tmp_path / "instances.json", dump)]
    clock = run_dataset(Oracle(ds, post), loader(ds, None, 0), evaluators, torch.device("cpu"),
                        lambda: torch.autocast("cpu", enabled=False), 5, len(ds))
    metrics = {k: v for e in evaluators for k, v in e.compute().items()}
    assert metrics["panoptic"]["All"]["PQ"] == pytest.approx(100.0)
    assert metrics["panoptic"]["All"]["n"] == len({s["category_id"] for im in ds.records
                                                   for s in im["panoptic"]["segments_info"] if not s["iscrowd"]})
    assert metrics["semantic"]["mIoU"] == pytest.approx(100.0) and metrics["semantic"]["pACC"] == pytest.approx(100.0)
    assert metrics["instance"]["AP"] == pytest.approx(100.0)
    assert clock.summary()["images"] == 2 and clock.summary()["warmup_images"] == 1
    # the official-format dump, scored by the predictions= mode, gives the same PQ
    rescored = score_panoptic({"data": sample_data(), "predictions": str(dump / "panoptic_predictions.json")})
    assert rescored["panoptic"] == metrics["panoptic"]


@needs_sample
def test_the_oracle_test_can_fail():
    """The same oracle with one stuff class relabelled loses PQ and mIoU (the metrics are not constant)."""
    ds = open_dataset(sample_data(min_size=0))
    raw = json.loads((SAMPLE / "panoptic_examples.json").read_text())["categories"]
    oracle = Oracle(ds, PostProcessor(133, thing_ids=ds.categories.thing_classes))
    stuff = next(s for s in ds.records[0]["panoptic"]["segments_info"] if s["category_id"] > 91)
    oracle.table = oracle.table.copy()
    oracle.table[stuff["category_id"]] = (oracle.table[stuff["category_id"]] + 1) % 133
    evaluators = [PanopticEvaluator(ds.categories, raw), SemanticEvaluator(ds.categories)]
    run_dataset(oracle, loader(ds, None, 0), evaluators, torch.device("cpu"),
                lambda: torch.autocast("cpu", enabled=False), 5, len(ds))
    metrics = {k: v for e in evaluators for k, v in e.compute().items()}
    assert metrics["panoptic"]["All"]["PQ"] < 99 and metrics["semantic"]["mIoU"] < 99


def test_the_users_overrides_win_and_are_noted():
    overrides, notes = merge_overrides(["backbone=swin_t", "encoder=m2f", "input=coco"],
                                       ["backbone=swin_s", "encoder.residual=true"])
    assert overrides == ["encoder=m2f", "input=coco", "backbone=swin_s", "encoder.residual=true"]
    assert notes == ["backbone=swin_t (inferred) replaced by your backbone=swin_s"]


def test_timing_leaves_the_warmup_out():
    clock = Clock(warmup=5)
    for s in (9.0, 9.0, 9.0, 9.0, 9.0, 1.0, 3.0):
        clock.add(data=0.0, compute=s, evaluate=0.5)
    t = clock.summary()
    assert t["timed_images"] == 2 and t["compute_s_per_img"] == 2.0 and t["s_per_img"] == 2.5
    single = Clock(warmup=5)
    single.add(data=0.1, compute=4.0, evaluate=0.0)
    assert single.summary()["warmup_images"] == 0  # detectron2: min(5, N - 1)


def test_categories_map_dataset_ids_to_contiguous_classes():
    cats = Categories.from_json([{"id": 92, "name": "b", "isthing": 0}, {"id": 1, "name": "a", "isthing": 1},
                                 {"id": 200, "name": "c", "isthing": 0}])
    assert cats.ids == (1, 92, 200) and cats.thing_classes == [0]
    table = cats.lookup()
    assert (table[1], table[92], table[200], table[5]) == (0, 1, 2, 255)


def evaluate(tmp_path: Path, **cfg) -> dict:
    from bench.evaluate.__main__ import run

    base = {"checkpoint": None, "predictions": None, "model": [], "limit": None, "device": "cpu",
            "precision": "fp32", "msda_backend": "pytorch", "workers": 0, "warmup": 5, "dump_predictions": False,
            "results": None, "data": sample_data(min_size=128, max_size=256)}
    return run({**base, **cfg}, tmp_path / "out")


@needs_sample
@pytest.mark.slow
def test_a_synthesized_official_checkpoint_is_evaluated_end_to_end(tmp_path):
    from bench.store import ResultStore
    from models.checkpoints import sha256
    from tests.test_checkpoints import hf_model, hf_to_d2, save_pkl

    path = tmp_path / "model_final.pkl"
    save_pkl(hf_to_d2(hf_model("r50").state_dict(), decoder_layers=10), path)
    metrics = evaluate(tmp_path, checkpoint=str(path), dump_predictions=True, results=str(tmp_path / "results"),
                       workers=1)
    out = tmp_path / "out"
    report = json.loads((out / "load_report.json").read_text())
    assert report["sha256"] == sha256(path) and "backbone=r50" in report["inferred"]
    assert report["dropped"] == ["criterion.empty_weight"] and report["loaded"] > 300
    assert metrics["model"] == {"backbone": "r50", "encoder": "m2f", "variant": "m2f", "overrides": report["overrides"],
                                "defaults_not_inferable": {"input.object_mask_threshold": 0.8,
                                                           "input.overlap_threshold": 0.8, "input.topk_per_image": 100}}
    assert metrics["images"] == 2 and metrics["panoptic"]["All"]["n"] > 0 and 0 <= metrics["semantic"]["mIoU"] <= 100
    assert metrics["not_computed"]["instance"].startswith("no instances JSON")
    timing = json.loads((out / "timing.json").read_text())
    assert timing["timed_images"] == 1 and timing["compute_s_per_img"] > 0 and timing["workers"] == 1
    with ResultStore(tmp_path / "results" / "results.sqlite", readonly=True) as store:
        (row,) = store.accuracy().to_dict("records")
    assert row["checkpoint_sha256"] == report["sha256"] and row["PQ"] == metrics["panoptic"]["All"]["PQ"]
    assert (row["dataset"], row["backbone"], row["variant"], row["images"]) == ("coco", "r50", "m2f", 2)
    assert json.loads((out / "accuracy.json").read_text())["run_id"] == row["run_id"]
    # the dumped predictions, scored without the model, give the same PQ
    from bench.evaluate.__main__ import score_panoptic

    pred = out / "predictions" / "panoptic_predictions.json"
    assert score_panoptic({"data": sample_data(), "predictions": str(pred)})["panoptic"] == metrics["panoptic"]


@needs_sample
def test_bad_requests_are_refused_with_the_reason(tmp_path):
    with pytest.raises(DatasetError, match="predicts 19 classes but data=coco_panoptic has 133"):
        evaluate(tmp_path, checkpoint="random", model=["backbone=r50", "input=cityscapes"], limit=1)
    metrics = evaluate(tmp_path, checkpoint="random", model=["backbone=r50"], limit=1, results=str(tmp_path / "res"))
    assert metrics["checkpoint"] == "random" and not (tmp_path / "res").exists()  # random weights are not stored
    with pytest.raises(DatasetError, match="either checkpoint="):
        evaluate(tmp_path, checkpoint="random", predictions="p.json")
    with pytest.raises(DatasetError, match=r"precision='fp8': valid choices are \['fp32', 'tf32', 'bf16'\]"):
        evaluate(tmp_path, checkpoint="random", precision="fp8")
    with pytest.raises(DatasetError, match="model overrides: .*backbone"):
        evaluate(tmp_path, checkpoint="random", model=["backbone=nonsense"])
    from models.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        evaluate(tmp_path, checkpoint=str(tmp_path / "missing.pkl"))


def data_config(name: str, root: Path) -> dict:
    """conf/data/<name>.yaml as the evaluate app composes it."""
    from omegaconf import OmegaConf

    from bench.config import compose

    return OmegaConf.to_container(compose([f"data={name}", f"data.root={root}"], "evaluate"), resolve=True)["data"]


def save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_cityscapes_semantic_truth_is_train_ids_from_label_ids(tmp_path):
    from bench.evaluate.panoptic import id2rgb

    stem = "frankfurt_000000_000294"
    save_png(tmp_path / "leftImg8bit/val/frankfurt" / f"{stem}_leftImg8bit.png", np.zeros((8, 16, 3), np.uint8))
    label = np.array([[7, 8, 11, 0, 26, 33, 3, 24]] * 8, dtype=np.uint8).repeat(2, axis=1)  # road, sidewalk, ...
    save_png(tmp_path / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelIds.png", label)
    pan = np.zeros((8, 16), np.int32)
    pan[:, :2] = 7
    save_png(tmp_path / "gtFine/cityscapes_panoptic_val" / f"{stem}_gtFine_panoptic.png", id2rgb(pan))
    cats = [{"id": i, "name": str(i), "isthing": int(i >= 24)} for i in
            (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)]
    (tmp_path / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps({
        "images": [{"id": stem, "file_name": f"{stem}_leftImg8bit.png"}], "categories": cats,
        "annotations": [{"image_id": stem, "file_name": f"{stem}_gtFine_panoptic.png",
                         "segments_info": [{"id": 7, "category_id": 7, "iscrowd": 0}]}]}))
    ds = open_dataset(data_config("cityscapes", tmp_path))
    item = ds[0]
    assert item["orig_size"] == (8, 16) and item["image"].shape == (1024, 2048, 3)  # short side to 1024
    assert item["semantic"][0].tolist() == [0, 0, 1, 1, 2, 2, 255, 255, 13, 13, 18, 18, 255, 255, 11, 11]
    assert ds.categories.thing_classes == list(range(11, 19))  # person .. bicycle: train ids 11-18


def test_ade20k_semantic_truth_is_the_annotation_minus_one(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    save_png(base / "images/validation/ADE_val_00000001.jpg", np.zeros((6, 6, 3), np.uint8))
    save_png(base / "annotations/validation/ADE_val_00000001.png", np.array([[0, 1, 150]] * 6, np.uint8).repeat(2, 1))
    ds = open_dataset(data_config("ade20k_semantic", tmp_path))
    item = ds[0]
    assert ds.records[0]["id"] == "ADE_val_00000001" and len(ds.categories) == 150
    assert item["semantic"][0].tolist() == [255, 255, 0, 0, 149, 149] and item["image"].shape == (640, 640, 3)
    assert "panoptic" not in item


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_a_damaged_ground_truth_png_is_named(tmp_path, damage):
    from PIL import Image

    from bench.evaluate.datasets import DatasetError, read_ids

    path = tmp_path / "000000000001.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>not found</html>")
    with pytest.raises(DatasetError, match=f"{path}.*cannot be read.*truncated or damaged"):
        read_ids(path, "the ground-truth PNG")
