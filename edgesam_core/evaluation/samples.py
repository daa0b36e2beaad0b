"""Evaluation-side readers for SA-1B and COCO: original images and ground truth in original pixels.

The training datasets return resized, padded tensors; evaluation needs the untouched image and masks, so
these readers are separate and small. Masks are decoded lazily, one object at a time, because an SA-1B
image holds ~100 full-resolution masks. Both readers visit images in a fixed, sorted order (SA-1B by file
name, COCO by image id), so "the first N images" means the same images on every machine (upstream relies
on an unsorted ``glob``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.prompts import decode_segmentation
from ..errors import DatasetError

DATASETS: tuple[str, ...] = ("sa1b", "coco")


@dataclass(frozen=True)
class EvalObject:
    """One ground-truth object: its segmentation (decoded on demand), box, optional point, area, ids."""

    ann_id: int
    segmentation: Any
    height: int
    width: int
    box: np.ndarray
    """xyxy in original pixels."""
    area: float
    """Area in original pixels (the annotation's ``area``, else the decoded mask's pixel count)."""
    category_id: int = 1
    point: tuple[float, float] | None = None
    """SA-1B's annotated ``point_coords`` (x, y), if present."""

    def mask(self) -> np.ndarray:
        """Decode the segmentation (polygons, RLE or compressed RLE) to an ``H x W`` bool mask."""
        return decode_segmentation(self.segmentation, self.height, self.width).astype(bool)


@dataclass(frozen=True)
class EvalSample:
    """One image (``H x W x 3`` uint8 RGB, loaded on demand) with its ground-truth objects."""

    key: str
    image_id: int
    path: Path
    height: int
    width: int
    objects: Sequence[EvalObject]
    index: int = 0  # position in the dataset's order (upstream seeds its object subset with it)

    def image(self) -> np.ndarray:
        """Load the image as ``H x W x 3`` uint8 RGB and check its size against the annotation."""
        from PIL import Image

        try:
            with Image.open(self.path) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"Cannot read image {self.path}: {exc}") from exc
        if array.shape[:2] != (self.height, self.width):
            raise DatasetError(
                f"{self.path} is {array.shape[1]}x{array.shape[0]} but its annotation says "
                f"{self.width}x{self.height}; the image and annotation files do not belong together"
            )
        return array


def _xywh_to_xyxy(bbox: Sequence[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x, y, x + w, y + h], dtype=np.float32)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Cannot read annotation file {path}: {exc}") from exc


class SA1BEvalSet:
    """SA-1B split laid out as ``<root>/images/<split>/*.jpg`` + ``<root>/annotations/<split>/<stem>.json``.

    Args:
        root: dataset root (e.g. ``datasets/SA-1B``).
        split: split folder name (``val``).
        num_samples: keep only the first N images in sorted file-name order (None: all).
        order: ``sorted`` (file names; the same on every machine) or ``upstream`` (the unsorted directory
            listing EdgeSAM's ``SA1BDataset`` iterates, which depends on the filesystem).
    """

    def __init__(self, root: str | Path, split: str = "val", num_samples: int | None = None,
                 order: str = "sorted") -> None:
        root = Path(root)
        image_dir, ann_dir = root / "images" / split, root / "annotations" / split
        if not image_dir.is_dir() or not ann_dir.is_dir():
            raise DatasetError(
                f"No SA-1B split '{split}' under {root}: expected {image_dir}/*.jpg and {ann_dir}/*.json "
                "(use 'edgesam download-data' to fetch and lay out SA-1B)"
            )
        listing = list(image_dir.glob("*.jpg"))
        pairs = [(p, ann_dir / f"{p.stem}.json") for p in (listing if order == "upstream" else sorted(listing))]
        pairs = [(img, ann) for img, ann in pairs if ann.is_file()]
        if not pairs:
            raise DatasetError(f"No image with a matching annotation JSON in {image_dir} / {ann_dir}")
        if num_samples is not None and num_samples >= 0:
            pairs = pairs[:num_samples]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[EvalSample]:
        for index, (image_path, ann_path) in enumerate(self.pairs):
            yield self._sample(index, image_path, ann_path)

    @staticmethod
    def _sample(index: int, image_path: Path, ann_path: Path) -> EvalSample:
        record = _read_json(ann_path)
        try:
            info = record["image"]
            height, width = int(info["height"]), int(info["width"])
            objects = []
            for ann in record["annotations"]:
                point = None
                if ann.get("point_coords"):
                    px, py = ann["point_coords"][0]
                    point = (float(px), float(py))
                objects.append(EvalObject(
                    ann_id=int(ann["id"]), segmentation=ann["segmentation"], height=height, width=width,
                    box=_xywh_to_xyxy(ann["bbox"]), area=float(ann.get("area", -1)), point=point,
                ))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{ann_path} is not an SA-1B annotation file (missing or bad field {exc})") from exc
        return EvalSample(key=image_path.stem, image_id=int(info.get("image_id", index)), path=image_path,
                          height=height, width=width, objects=objects, index=index)


class COCOEvalSet:
    """COCO instances split: ``<root>/annotations/instances_<split>2017.json`` and its images.

    Images are looked up in ``<root>/<split>2017``, ``<root>/images/<split>2017``, ``<root>/trainval``
    (upstream's layout) or ``<root>/images``. Crowd annotations and images without annotations are skipped.

    Args:
        root: dataset root (e.g. ``datasets/coco``).
        split: ``val`` or ``train`` (``val2017`` also accepted).
        num_samples: keep only the first N images in image-id order (None: all).
        annotation_file: explicit instances JSON, overriding the default location.
        order: ``sorted`` (images by id, objects by annotation id) or ``upstream`` (both in the JSON's own
            order, as EdgeSAM's ``COCODataset``).
    """

    def __init__(self, root: str | Path, split: str = "val", num_samples: int | None = None,
                 annotation_file: str | Path | None = None, order: str = "sorted") -> None:
        root = Path(root)
        split_name = split if split[-4:].isdigit() else f"{split}2017"
        ann_path = Path(annotation_file) if annotation_file else root / "annotations" / f"instances_{split_name}.json"
        if not ann_path.is_file():
            raise DatasetError(f"COCO annotation file not found: {ann_path} (expected <root>/annotations/"
                               f"instances_{split_name}.json; see 'edgesam download-data')")
        data = _read_json(ann_path)
        try:
            by_image: dict[int, list[dict]] = {}
            for ann in data["annotations"]:
                if not ann.get("iscrowd", 0):
                    by_image.setdefault(int(ann["image_id"]), []).append(ann)
            images = [img for img in data["images"] if int(img["id"]) in by_image]
            if order != "upstream":
                images.sort(key=lambda i: int(i["id"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{ann_path} is not a COCO instances file (missing or bad field {exc})") from exc
        if not images:
            raise DatasetError(f"{ann_path} has no image with a non-crowd annotation")
        if num_samples is not None and num_samples >= 0:
            images = images[:num_samples]
        candidates = [root / split_name, root / "images" / split_name, root / "trainval", root / "images"]
        first = self._file_name(images[0])
        image_dir = next((d for d in candidates if (d / first).is_file()), None)
        if image_dir is None:
            raise DatasetError(f"COCO image {first} not found in any of: " + ", ".join(str(d) for d in candidates))
        self.image_dir, self.images, self.by_image, self.order = image_dir, images, by_image, order

    @staticmethod
    def _file_name(image: dict) -> str:
        return image.get("file_name") or str(image["coco_url"]).rsplit("/", 1)[-1]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[EvalSample]:
        for index, image in enumerate(self.images):
            height, width = int(image["height"]), int(image["width"])
            anns = self.by_image[int(image["id"])]
            if self.order != "upstream":
                anns = sorted(anns, key=lambda a: int(a["id"]))
            objects = [
                EvalObject(ann_id=int(ann["id"]), segmentation=ann["segmentation"], height=height, width=width,
                           box=_xywh_to_xyxy(ann["bbox"]), area=float(ann.get("area", -1)),
                           category_id=int(ann.get("category_id", 1)))
                for ann in anns
            ]
            name = self._file_name(image)
            yield EvalSample(key=Path(name).stem, image_id=int(image["id"]), path=self.image_dir / name,
                             height=height, width=width, objects=objects, index=index)


def open_eval_dataset(name: str, root: str | Path, split: str = "val",
                      num_samples: int | None = None, order: str = "sorted") -> SA1BEvalSet | COCOEvalSet:
    """Open an evaluation dataset by name (``sa1b`` or ``coco``); ``order`` as in the dataset classes.

    Raises:
        DatasetError: unknown name, or files missing under ``root``.
    """
    if name == "sa1b":
        return SA1BEvalSet(root, split, num_samples, order=order)
    if name == "coco":
        return COCOEvalSet(root, split, num_samples, order=order)
    raise DatasetError(f"Unknown evaluation dataset '{name}'; choose one of {', '.join(DATASETS)}")
