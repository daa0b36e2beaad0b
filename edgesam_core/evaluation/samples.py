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

from ..data.prompt_sampling import decode_segmentation
from ..errors import DatasetError

DATASETS: tuple[str, ...] = ("sa1b", "coco", "folder")


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
        listing = [p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
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
                 annotation_file: str | Path | None = None, order: str = "sorted",
                 image_dir: str | Path | None = None) -> None:
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
        candidates = [root / split_name, root / "images" / split_name, root / "trainval", root / "images", root]
        if image_dir is not None:
            candidates = [Path(image_dir)]
        first = self._file_name(images[0])
        image_dir = next((d for d in candidates if (d / first).is_file()), None)
        if image_dir is None:
            raise DatasetError(f"COCO image {first} not found in any of: " + ", ".join(str(d) for d in candidates))
        self.image_dir, self.images, self.by_image, self.order = image_dir, images, by_image, order
        self.path = ann_path
        #: Category id -> name (from the file's ``categories``).
        self.categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}

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
                EvalObject(ann_id=int(ann["id"]), segmentation=_checked_segmentation(ann, height, width, self.path),
                           height=height, width=width, box=_xywh_to_xyxy(ann["bbox"]),
                           area=float(ann.get("area", -1)), category_id=int(ann.get("category_id", 1)))
                for ann in anns
            ]
            name = self._file_name(image)
            yield EvalSample(key=Path(name).stem, image_id=int(image["id"]), path=self.image_dir / name,
                             height=height, width=width, objects=objects, index=index)


def _checked_segmentation(ann: dict, height: int, width: int, path: Path) -> Any:
    """The annotation's segmentation if it is well formed (polygons of >= 3 points, or an RLE of the image's size).

    Raises:
        DatasetError: one line naming the file and the annotation.
    """
    seg = ann.get("segmentation")
    where = f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')})"
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise DatasetError(f"{where} has a polygon that is not a list of >= 3 x,y pairs; fix or delete it")
            if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in poly):
                raise DatasetError(f"{where} has a polygon with non-numeric or non-finite coordinates; fix it")
        return seg
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [height, width]:
            raise DatasetError(f"{where}: its RLE is {seg['size'][0]}x{seg['size'][1]} (HxW) but the image is "
                               f"{height}x{width}; the annotation belongs to another image")
        return seg
    raise DatasetError(f"{where} has no polygon or RLE 'segmentation'; fix or delete it")


class MaskFolderSet:
    """Your own images with one mask per object, as PNGs::

        <root>/images/<stem>.jpg|png|...
        <root>/masks/<stem>.png          one instance-id PNG: 0 background, 1..N the objects
        <root>/masks/<stem>/<name>.png   or one binary PNG per object (any non-zero pixel is the object)

    Per-object files name their class: ``<class>.png`` or ``<class>_<n>.png`` (``leaf_1.png``, ``leaf_2.png``);
    instance-id PNGs give class ``object``. Images without masks are skipped; objects with no pixel are
    skipped. Masks are read once, here, and kept as compressed RLE.

    Raises:
        DatasetError: no ``images``/``masks`` folders, a mask whose size is not its image's, an unreadable PNG
            (one line naming the file).
    """

    def __init__(self, root: str | Path, num_samples: int | None = None) -> None:
        from ..inference.image_io import IMAGE_SUFFIXES

        root = Path(root)
        image_dir, mask_dir = root / "images", root / "masks"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise DatasetError(f"{root} is not a mask folder: expected {image_dir}/ and {mask_dir}/ (one "
                               "<stem>.png instance-id mask or a <stem>/ folder of per-object masks per image)")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.pairs = [(p, mask_dir / f"{p.stem}.png" if (mask_dir / f"{p.stem}.png").is_file() else mask_dir / p.stem)
                      for p in images if (mask_dir / f"{p.stem}.png").is_file() or (mask_dir / p.stem).is_dir()]
        if not self.pairs:
            raise DatasetError(f"No image in {image_dir} has masks in {mask_dir} (masks/<stem>.png or masks/<stem>/)")
        if num_samples is not None and num_samples >= 0:
            self.pairs = self.pairs[:num_samples]
        self.categories: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[EvalSample]:
        for index, (image_path, masks) in enumerate(self.pairs):
            yield self._sample(index, image_path, masks)

    def _category(self, name: str) -> int:
        base = name.rsplit("_", 1)[0] if "_" in name and name.rsplit("_", 1)[1].isdigit() else name
        for cid, known in self.categories.items():
            if known == base:
                return cid
        self.categories[len(self.categories) + 1] = base
        return len(self.categories)

    def _sample(self, index: int, image_path: Path, masks: Path) -> EvalSample:
        from PIL import Image

        from ..inference.amg import coco_mask_api

        mask_utils = coco_mask_api()
        try:
            with Image.open(image_path) as img:
                width, height = img.size
        except OSError as exc:
            raise DatasetError(f"Cannot read image {image_path}: {exc}") from exc
        if masks.is_dir():
            files = sorted(masks.glob("*.png"), key=_object_order)
            objects = [(f, f.stem, _read_png(f, (height, width)) > 0) for f in files]
        else:
            ids = _read_png(masks, (height, width))
            objects = [(masks, "object", ids == k) for k in np.unique(ids) if k != 0]
        result = []
        for k, (path, name, mask) in enumerate(objects):
            area = int(mask.sum())
            if area == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ys, xs = np.nonzero(mask)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            result.append(EvalObject(ann_id=index * 10_000 + k + 1,
                                     segmentation={"size": [height, width], "counts": rle["counts"].decode("ascii")},
                                     height=height, width=width, box=box, area=float(area),
                                     category_id=self._category(name)))
        return EvalSample(key=image_path.stem, image_id=index, path=image_path, height=height, width=width,
                          objects=result, index=index)


def _object_order(path: Path) -> tuple[int, str]:
    """Per-object mask files in the order of their number suffix (``leaf_2`` before ``leaf_10``), then name."""
    head, _, tail = path.stem.rpartition("_")
    return (int(tail), head) if head and tail.isdigit() else (-1, path.stem)


def _read_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("I") if img.mode not in ("L", "P", "1", "I", "I;16") else img)
    except OSError as exc:
        raise DatasetError(f"Cannot read mask {path}: {exc}") from exc
    if array.ndim != 2:
        raise DatasetError(f"{path} is not a one-channel mask (shape {array.shape}); save it as an L or P PNG")
    if array.shape != size:
        raise DatasetError(f"{path} is {array.shape[1]}x{array.shape[0]} but its image is {size[1]}x{size[0]}; "
                           "a mask must have its image's size")
    return array.astype(np.int64)


class KeptImages:
    """The samples of ``dataset`` whose key (file stem) is in ``keys``, in the dataset's order."""

    def __init__(self, dataset: Any, keys: set[str]) -> None:
        self.dataset, self.keys = dataset, set(keys)

    def __iter__(self) -> Iterator[EvalSample]:
        return (s for s in self.dataset if s.key in self.keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def read_image_list(path: str | Path) -> set[str]:
    """File stems, one per line (``#`` comments and blank lines ignored).

    Raises:
        DatasetError: unreadable or empty.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read the image list {path}: {exc}") from exc
    keys = {Path(line.strip()).stem for line in lines if line.strip() and not line.lstrip().startswith("#")}
    if not keys:
        raise DatasetError(f"{path} lists no image (one file name or stem per line)")
    return keys


def open_user_dataset(path: str | Path, num_samples: int | None = None) -> MaskFolderSet | COCOEvalSet:
    """Your data, by what ``path`` is: a COCO instances ``.json`` (images beside it or in ``images/``), a folder
    with ``annotations/instances_*.json``, a mask folder (``images/`` + ``masks/``), or SA-1B's layout
    (``images/<stem>.jpg`` + ``annotations/<stem>.json``).

    Raises:
        DatasetError: none of these.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        image_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
        return COCOEvalSet(path.parent, annotation_file=path, num_samples=num_samples, image_dir=image_dir)
    if path.is_dir() and (path / "masks").is_dir():
        return MaskFolderSet(path, num_samples)
    if path.is_dir() and (path / "annotations").is_dir():
        found = sorted((path / "annotations").glob("instances_*.json"))
        if found:
            return COCOEvalSet(path, annotation_file=found[0], num_samples=num_samples)
        if (path / "images").is_dir() and any((path / "annotations").glob("*.json")):
            return SA1BEvalSet(path, "", num_samples)  # SA-1B's per-image JSON: images/X.jpg + annotations/X.json
    raise DatasetError(f"{path} is neither a COCO instances .json, a folder with annotations/instances_*.json, a "
                       "mask folder (images/ + masks/), nor SA-1B style images/ + annotations/<stem>.json")


def open_eval_dataset(name: str, root: str | Path, split: str = "val", num_samples: int | None = None,
                      order: str = "sorted") -> SA1BEvalSet | COCOEvalSet | MaskFolderSet:
    """Open an evaluation dataset by name (``sa1b``, ``coco`` or ``folder``); ``order`` as in the dataset classes.

    ``folder`` is :func:`open_user_dataset`: a mask folder, a COCO ``.json`` or a folder holding one.

    Raises:
        DatasetError: unknown name, or files missing under ``root``.
    """
    if name == "sa1b":
        return SA1BEvalSet(root, split, num_samples, order=order)
    if name == "folder":
        return open_user_dataset(root, num_samples)
    if name == "coco":
        return COCOEvalSet(root, split, num_samples, order=order)
    raise DatasetError(f"Unknown evaluation dataset '{name}'; choose one of {', '.join(DATASETS)}")
