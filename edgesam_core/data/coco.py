"""COCO (and COCO-format LVIS) instances as box prompts, with the same item layout as SA-1B."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesam_core.data.prompt_dataset import PromptDataset, RawSample, load_json, load_rgb
from edgesam_core.data.prompt_sampling import box_centers, decode_segmentation, mask_center_point, xywh_to_xyxy
from edgesam_core.errors import DatasetError

POINT_SOURCES = ("none", "mask_center", "box_center")


class COCODataset(PromptDataset):
    """COCO instance annotations as box prompts (crowd annotations and images without any are skipped).

    Args:
        root: COCO root, e.g. ``datasets/coco``.
        split: ``"val"`` or ``"train"``; picks ``annotations/instances_<split>2017.json``.
        annotation_file: another annotation JSON (e.g. LVIS), absolute or relative to ``root``.
        image_dir: image folder; default ``<root>/<split>2017``, else ``<root>/trainval`` (upstream layout).
        img_size: model input size.
        num_samples: keep only the first ``num_samples`` images by image id (``-1``: all).
        max_prompts: at most this many annotations per image, drawn without replacement.
        seed: prompt sampling seed.
        load_gt_masks: also return the sampled masks (``gt_mask``).
        point_source: ``"none"`` (boxes only, as upstream), ``"mask_center"`` (a point inside each mask) or
            ``"box_center"``; adds ``prompt_point`` when not ``"none"``.
        on_error: ``"skip"`` or ``"raise"`` for unreadable samples.

    Raises:
        DatasetError: missing annotation file or image folder, unreadable JSON, or no usable image.
    """

    def __init__(self, root: str | Path, split: str = "val", annotation_file: str | Path | None = None,
                 image_dir: str | Path | None = None, img_size: int = 1024, num_samples: int = -1,
                 max_prompts: int = 16, seed: int = 0, load_gt_masks: bool = False, point_source: str = "none",
                 on_error: str = "skip") -> None:
        super().__init__(img_size=img_size, max_prompts=max_prompts, seed=seed, load_gt_masks=load_gt_masks,
                         on_error=on_error)
        if point_source not in POINT_SOURCES:
            raise ValueError(f"point_source must be one of {POINT_SOURCES}, got {point_source!r}")
        self.point_source = point_source
        self.root = Path(root)
        ann_path = Path(annotation_file) if annotation_file else Path("annotations") / f"instances_{split}2017.json"
        self.annotation_file = ann_path if ann_path.is_absolute() else self.root / ann_path
        if not self.annotation_file.is_file():
            raise DatasetError(f"COCO annotation file {self.annotation_file} does not exist; download "
                               "annotations_trainval2017.zip from cocodataset.org or pass annotation_file")
        self.image_dir = self._find_image_dir(image_dir, split)
        try:
            data = load_json(self.annotation_file)
            images = {int(img["id"]): img for img in data["images"]}
            annotations = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{self.annotation_file} is not a COCO instances file ({exc})") from exc
        ignored = self._ignored_files()
        by_image: dict[int, list[dict]] = {}
        for ann in annotations:
            if ann.get("iscrowd", 0):
                continue
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        self.entries = []
        for image_id in sorted(by_image):
            info = images.get(image_id)
            if info is None:
                continue
            name = info.get("file_name") or str(info.get("coco_url", "")).rsplit("/", 1)[-1]
            if not name or name in ignored:
                continue
            self.entries.append((image_id, name, info, by_image[image_id]))
        if num_samples is not None and num_samples >= 0:
            self.entries = self.entries[:num_samples]
        if not self.entries:
            raise DatasetError(f"{self.annotation_file} has no image with a non-crowd annotation")

    def _find_image_dir(self, image_dir: str | Path | None, split: str) -> Path:
        if image_dir is not None:
            path = Path(image_dir)
            path = path if path.is_absolute() else self.root / path
            if not path.is_dir():
                raise DatasetError(f"COCO image folder {path} does not exist; check image_dir")
            return path
        for candidate in (self.root / f"{split}2017", self.root / "trainval"):
            if candidate.is_dir():
                return candidate
        raise DatasetError(f"No COCO image folder: neither {self.root / f'{split}2017'} nor "
                           f"{self.root / 'trainval'} exists; unzip {split}2017.zip there or pass image_dir")

    def _ignored_files(self) -> set[str]:
        """Names listed in ``annotations/ignore.json`` (LVIS images missing from COCO), as upstream."""
        path = self.root / "annotations" / "ignore.json"
        if not path.is_file():
            return set()
        try:
            return {str(name) for name in load_json(path)}
        except (OSError, ValueError, TypeError) as exc:
            raise DatasetError(f"{path} should be a JSON list of file names ({exc})") from exc

    def __len__(self) -> int:
        return len(self.entries)

    def _describe(self, index: int) -> str:
        return str(self.image_dir / self.entries[index][1])

    def _load(self, index: int) -> RawSample:
        image_id, name, info, anns = self.entries[index]
        image = load_rgb(self.image_dir / name)
        height, width = image.shape[:2]
        if (int(info.get("height", height)), int(info.get("width", width))) != (height, width):
            raise ValueError(f"annotation says {info.get('height')}x{info.get('width')} but the image is "
                             f"{height}x{width}")
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        segmentations = [a.get("segmentation", []) for a in anns]
        points = None
        if self.point_source == "box_center":
            points = box_centers(xywh_to_xyxy(boxes))
        elif self.point_source == "mask_center":
            points = np.array([mask_center_point(decode_segmentation(seg, height, width)) for seg in segmentations],
                              dtype=np.float64).reshape(-1, 2)
            # An empty mask has no inside point; fall back to its box centre.
            empty = np.isnan(points[:, 0])
            points[empty] = box_centers(xywh_to_xyxy(boxes[empty]))
        return RawSample(
            image=image, image_id=str(image_id), file_name=name, boxes_xywh=boxes, segmentations=segmentations,
            annotation_ids=np.array([a.get("id", i) for i, a in enumerate(anns)], dtype=np.int64),
            areas=np.array([a.get("area", 0) for a in anns], dtype=np.float64), points=points,
            extra={"category_ids": np.array([a.get("category_id", 0) for a in anns], dtype=np.int64)})
