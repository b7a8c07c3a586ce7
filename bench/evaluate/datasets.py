"""Readers for the standard on-disk dataset layouts (those Mask2Former documents), with errors that
say which file was expected where."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.evaluate.panoptic import rgb2id


class DatasetError(ValueError):
    """A dataset or prediction folder is missing or malformed; the message names the expected path."""


def need_path(path: Path, what: str, hint: str = "") -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: expected {path}" + (f" ({hint})" if hint else ""))
    return path


def read_json(path: Path, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with ``keys``; a clear error when it is missing, not JSON, or lacks one."""
    need_path(path, what)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{what} {path} is not valid JSON: {err}") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetError(f"{what} {path} has no {', '.join(repr(k) for k in missing)}")
    return data


def read_image(path: Path, what: str, mode: str | None = None, convert: bool = False) -> np.ndarray:
    """An image file as an array; ``mode``: the PIL mode it must have (or, with ``convert``, is converted
    to). A missing, truncated or damaged file is a ``DatasetError`` that names it."""
    from PIL import Image

    need_path(path, what)
    try:
        with Image.open(path) as im:
            if mode and convert:
                return np.asarray(im.convert(mode))
            if mode and im.mode != mode:
                raise DatasetError(f"{what} {path} is {im.mode}, not {mode}")
            return np.asarray(im)
    except (OSError, SyntaxError) as err:  # PIL: unidentified, truncated ("image file is truncated"), ...
        raise DatasetError(f"{what} {path} cannot be read ({err}); is it truncated or damaged?") from None


def read_ids(path: Path, what: str) -> np.ndarray:
    """The segment-id map of a COCO panoptic PNG."""
    return rgb2id(read_image(path, what, "RGB"))


@dataclass
class CocoPanoptic:
    """COCO panoptic ground truth: ``panoptic_json`` (images, annotations, categories) and the PNGs in
    ``panoptic_dir`` (ids = R + 256 G + 256^2 B)."""

    panoptic_json: Path
    panoptic_dir: Path
    images_dir: Path | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> CocoPanoptic:
        if not data.get("root"):
            raise DatasetError("data.root is not set: give the dataset folder, e.g. data.root=datasets/coco "
                               "(with val2017/, annotations/panoptic_val2017.json and panoptic_val2017/)")
        need_path(Path(data["root"]), "the dataset folder (data.root)")
        return cls(Path(data["panoptic_json"]), Path(data["panoptic_dir"]), Path(data["images"]))

    def load(self) -> dict[str, Any]:
        gt = read_json(self.panoptic_json, "the panoptic ground-truth JSON", ("annotations", "categories"))
        need_path(self.panoptic_dir, "the panoptic ground-truth PNG folder")
        self.by_image = {a["image_id"]: a for a in gt["annotations"]}
        return gt

    def ground_truth(self, image_id: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
        ann = self.by_image[image_id]
        return read_ids(self.panoptic_dir / ann["file_name"], "the ground-truth PNG"), ann["segments_info"]


@dataclass
class PanopticPredictions:
    """Predictions in the official format: ``PRED.json`` with ``annotations`` (``image_id``,
    ``file_name``, ``segments_info``), and the PNGs in the folder of the same name without ``.json``."""

    json_path: Path

    def load(self) -> list[dict[str, Any]]:
        data = read_json(self.json_path, "the predictions JSON", ("annotations",))
        self.folder = self.json_path.with_suffix("")
        need_path(self.folder, "the predictions' PNG folder", "panopticapi's convention: PRED.json beside PRED/")
        return sorted(data["annotations"], key=lambda a: a["image_id"])

    def prediction(self, ann: Mapping[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        return read_ids(self.folder / ann["file_name"], "the predicted PNG"), list(ann["segments_info"])


def pairs(gt: CocoPanoptic, preds: PanopticPredictions, limit: int | None) -> Iterator[tuple[Any, tuple, tuple]]:
    """(image id, ground truth, prediction) for every predicted image (the first ``limit``); every
    ground-truth image must be predicted unless ``limit`` is set (as the official evaluator checks)."""
    annotations = preds.load()
    predicted = {a["image_id"] for a in annotations}
    unknown = sorted(predicted - set(gt.by_image), key=str)
    if unknown:
        raise DatasetError(f"predictions for images the ground truth does not have: {unknown[:5]}")
    if limit is None:
        missing = sorted(set(gt.by_image) - predicted, key=str)
        if missing:
            raise DatasetError(f"{len(missing)} ground-truth images have no prediction (e.g. {missing[:5]}); "
                               "score a subset with limit=N")
    for ann in annotations[:limit]:
        yield ann["image_id"], gt.ground_truth(ann["image_id"]), preds.prediction(ann)
