"""Evaluation images and their ground truth from the standard on-disk layouts, resized as detectron2
resizes them at test time.

A dataset is described by its ``conf/data/<name>.yaml`` group: where the images, the panoptic JSON and
PNGs and the semantic labels live, and the test-time resize. Every dataset lists its images in a fixed
order (by image id) and yields, per image, the resized RGB image, its original size and its ground
truth: the panoptic id map and segments, and a semantic label map (contiguous classes, 255 = ignore).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.evaluate.datasets import DatasetError, need_path, read_ids, read_image, read_json

IGNORE = 255
SEMANTIC_SOURCES = ("panoptic", "labelids", "ade", "none")


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: the shorter side to ``short``, the longer at
    most ``max_size``, each rounded with ``int(x + 0.5)``."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """An (H, W, 3) uint8 image resized as detectron2's ``ResizeTransform`` does at test time: PIL
    bilinear on uint8. ``short <= 0`` leaves it as it is."""
    from PIL import Image

    if short <= 0:
        return image
    h, w = image.shape[:2]
    newh, neww = resized_shape(h, w, short, max_size)
    if (newh, neww) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (EXIF orientation is not applied, as detectron2's COCO readers)."""
    return read_image(path, "the image", "RGB", convert=True)


@dataclass(frozen=True)
class Categories:
    """A dataset's categories in id order; contiguous class k is the k-th (as detectron2's metadata)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    isthing: tuple[bool, ...]

    @classmethod
    def from_json(cls, categories: Sequence[Mapping[str, Any]]) -> Categories:
        cats = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats),
                   tuple(bool(c.get("isthing", 0)) for c in cats))

    @classmethod
    def plain(cls, n: int) -> Categories:
        """``n`` stuff classes with ids 0..n-1 (a semantic-only dataset)."""
        return cls(tuple(range(n)), tuple(str(i) for i in range(n)), (False,) * n)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def thing_classes(self) -> list[int]:
        return [k for k, t in enumerate(self.isthing) if t]

    def lookup(self) -> np.ndarray:
        """A table dataset id -> contiguous class (255 where the id is not a category)."""
        table = np.full(max(max(self.ids) + 1, 256), IGNORE, dtype=np.uint8)
        table[list(self.ids)] = np.arange(len(self.ids))
        return table


@dataclass
class EvalDataset:
    """The images of one split with their ground truth (a ``torch.utils.data`` map-style dataset)."""

    name: str
    images_dir: Path
    records: list[dict[str, Any]]
    categories: Categories
    panoptic_dir: Path | None
    semantic: str
    semantic_dir: Path | None
    min_size: int
    max_size: int
    images_by_city: bool = False
    raw_categories: list[dict[str, Any]] = field(default_factory=list)  # as the panoptic JSON lists them

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, rec: Mapping[str, Any]) -> Path:
        name = rec["file_name"]
        return self.images_dir / name.split("_")[0] / name if self.images_by_city else self.images_dir / name

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        image = read_rgb(self.image_path(rec))
        h, w = image.shape[:2]
        item: dict[str, Any] = {"image_id": rec["id"], "file_name": rec["file_name"], "orig_size": (h, w),
                                "image": np.ascontiguousarray(resize_image(image, self.min_size, self.max_size))}
        if "panoptic" in rec:
            ids = read_ids(self.panoptic_dir / rec["panoptic"]["file_name"], "the ground-truth panoptic PNG")
            self._same_size(ids, (h, w), rec)
            item["panoptic"] = (ids, rec["panoptic"]["segments_info"])
        if self.semantic != "none":
            item["semantic"] = self.semantic_truth(rec, item.get("panoptic"))
            self._same_size(item["semantic"], (h, w), rec)
        return item

    @staticmethod
    def _same_size(label: np.ndarray, size: tuple[int, int], rec: Mapping[str, Any]) -> None:
        if label.shape != size:
            raise DatasetError(f"image {rec['file_name']} is {size[0]}x{size[1]} but its ground truth is "
                               f"{label.shape[0]}x{label.shape[1]}")

    def semantic_truth(self, rec: Mapping[str, Any], panoptic: tuple | None) -> np.ndarray:
        """Contiguous class per pixel, 255 = ignore, from the configured source."""
        if self.semantic == "panoptic":  # every segment, crowd included (Mask2Former's COCO/ADE conversion)
            ids, segments = panoptic
            out = np.full(ids.shape, IGNORE, dtype=np.uint8)
            table = self.categories.lookup()
            for seg in segments:
                out[ids == seg["id"]] = table[seg["category_id"]]
            return out
        stem = Path(rec["file_name"]).stem
        if self.semantic == "labelids":  # Cityscapes: gtFine labelIds -> train ids via the categories
            city = stem.split("_")[0]
            path = self.semantic_dir / city / f"{stem.removesuffix('_leftImg8bit')}_gtFine_labelIds.png"
            return self.categories.lookup()[_read_label(path)]
        label = _read_label(self.semantic_dir / f"{stem}.png")  # ADE20K: 0 = other -> 255, classes shift down
        return (label.astype(np.int16) - 1).astype(np.uint8)


def _read_label(path: Path) -> np.ndarray:
    return read_image(path, "the semantic ground-truth PNG")


def open_dataset(data: Mapping[str, Any]) -> EvalDataset:
    """The dataset a ``conf/data`` group describes; ``DatasetError`` names the first missing file."""
    if not data.get("root"):
        raise DatasetError(f"data.root is not set: give the dataset folder, e.g. data.root=datasets/ "
                           f"({data.get('layout', 'see docs/accuracy.md for the layout')})")
    need_path(Path(data["root"]), "the dataset folder (data.root)")
    semantic = data.get("semantic", "none")
    if semantic not in SEMANTIC_SOURCES:
        raise DatasetError(f"data.semantic={semantic!r}: valid choices are {list(SEMANTIC_SOURCES)}")
    images_dir = need_path(Path(data["images"]), "the image folder (data.images)")
    raw_categories: list[dict[str, Any]] = []
    if data.get("panoptic_json"):
        records, raw_categories = _panoptic_records(Path(data["panoptic_json"]))
        categories = Categories.from_json(raw_categories)
        panoptic_dir = need_path(Path(data["panoptic_dir"]), "the panoptic ground-truth PNG folder (data.panoptic_dir)")
    else:
        records = [{"id": p.stem, "file_name": p.name} for p in sorted(images_dir.glob("*.jpg"))]
        if not records:
            raise DatasetError(f"no .jpg images in {images_dir}")
        categories, panoptic_dir = Categories.plain(int(data["num_classes"])), None
        if semantic == "panoptic":
            raise DatasetError("data.semantic=panoptic needs data.panoptic_json")
    semantic_dir = Path(data["semantic_dir"]) if data.get("semantic_dir") else None
    if semantic in ("labelids", "ade"):
        if semantic_dir is None:
            raise DatasetError(f"data.semantic={semantic} needs data.semantic_dir (the semantic ground-truth folder)")
        need_path(semantic_dir, "the semantic ground-truth folder (data.semantic_dir)")
    return EvalDataset(str(data["name"]), images_dir, records, categories, panoptic_dir, semantic, semantic_dir,
                       int(data.get("min_size", 0)), int(data.get("max_size", 0)), bool(data.get("images_by_city")),
                       raw_categories)


def _panoptic_records(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The images of a COCO-format panoptic JSON, each with its annotation, in image-id order; its categories."""
    gt = read_json(path, "the panoptic ground-truth JSON", ("images", "annotations", "categories"))
    by_image = {a["image_id"]: a for a in gt["annotations"]}
    records = []
    for img in sorted(gt["images"], key=lambda im: id_key(im["id"])):
        if img["id"] not in by_image:
            raise DatasetError(f"{path}: image {img['id']} has no annotation")
        records.append({"id": img["id"], "file_name": img["file_name"], "panoptic": by_image[img["id"]]})
    return records, gt["categories"]


def id_key(image_id: Any) -> tuple[int, Any]:
    """Sort key for image ids: numbers in numeric order, then names (Cityscapes, ADE20K)."""
    return (0, image_id) if isinstance(image_id, int) else (1, str(image_id))


def _single(item: dict[str, Any]) -> dict[str, Any]:
    return item  # no conversion to tensors: the ground truth stays numpy, segments stay dicts


def loader(dataset: EvalDataset, limit: int | None, workers: int) -> Any:
    """A DataLoader of single images (the first ``limit``), decoded and resized in ``workers`` processes."""
    import torch.utils.data as tud

    subset = tud.Subset(dataset, range(min(limit, len(dataset)) if limit else len(dataset)))
    return tud.DataLoader(subset, batch_size=None, shuffle=False, num_workers=workers,
                          collate_fn=_single)
