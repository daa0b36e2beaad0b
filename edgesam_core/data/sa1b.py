"""SA-1B as the distillation and evaluation data: ``images/<split>/*.jpg`` + ``annotations/<split>/*.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesam_core.data.collate import collate_fn
from edgesam_core.data.prompt_dataset import PromptDataset, RawSample, load_json, load_rgb, logger
from edgesam_core.errors import DatasetError

__all__ = ["SA1BDataset", "collate_fn"]


class SA1BDataset(PromptDataset):
    """SA-1B images with their annotations as box and point prompts (see ``prompt_dataset`` for items).

    Images are indexed in sorted file-name order, so "the first N images" is the same set on every
    machine (upstream globbed in filesystem order). An image without a matching JSON is left out.

    Args:
        root: dataset root holding ``images/`` and ``annotations/`` (what ``edgesam download-data`` writes).
        split: sub-folder, ``"train"`` or ``"val"``.
        img_size: model input size.
        num_samples: keep only the first ``num_samples`` images (``-1``: all).
        max_prompts: at most this many annotations per image, drawn without replacement.
        seed: prompt sampling seed.
        load_gt_masks: also return the sampled masks (``gt_mask``).
        on_error: ``"skip"`` or ``"raise"`` for unreadable samples.

    Raises:
        DatasetError: the folders are missing or hold no annotated image.
    """

    def __init__(self, root: str | Path, split: str = "train", img_size: int = 1024, num_samples: int = -1,
                 max_prompts: int = 16, seed: int = 0, load_gt_masks: bool = False, on_error: str = "skip") -> None:
        super().__init__(img_size=img_size, max_prompts=max_prompts, seed=seed, load_gt_masks=load_gt_masks,
                         on_error=on_error)
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / "images" / split
        self.annotation_dir = self.root / "annotations" / split
        for folder in (self.image_dir, self.annotation_dir):
            if not folder.is_dir():
                raise DatasetError(f"SA-1B folder {folder} does not exist; download the data with "
                                   f"`edgesam download-data --split {split} --out {self.root}`")
        stems = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        annotated = {p.stem for p in self.annotation_dir.glob("*.json")}
        self.missing_annotations = [s for s in stems if s not in annotated]
        if self.missing_annotations:
            logger.warning("%d image(s) in %s have no annotation JSON and are left out (e.g. %s)",
                           len(self.missing_annotations), self.image_dir, self.missing_annotations[0])
        self.keys = [s for s in stems if s in annotated]
        if num_samples is not None and num_samples >= 0:
            self.keys = self.keys[:num_samples]
        if not self.keys:
            raise DatasetError(f"No annotated images in {self.image_dir}; expected sa_*.jpg with matching "
                               f"{self.annotation_dir}/sa_*.json (see `edgesam download-data --help`)")

    def __len__(self) -> int:
        return len(self.keys)

    def _describe(self, index: int) -> str:
        key = self.keys[index]
        return f"{self.image_dir / (key + '.jpg')} / {key}.json"

    def _load(self, index: int) -> RawSample:
        key = self.keys[index]
        record = load_json(self.annotation_dir / f"{key}.json")
        image = load_rgb(self.image_dir / f"{key}.jpg")
        info = record.get("image", {})
        height, width = int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1]))
        if (height, width) != image.shape[:2]:
            raise ValueError(f"annotation says {height}x{width} but the image is {image.shape[0]}x{image.shape[1]}")
        anns = record["annotations"]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        points = np.array([a["point_coords"][0] if a.get("point_coords") else _box_center_xywh(a["bbox"])
                           for a in anns], dtype=np.float64).reshape(-1, 2)
        return RawSample(
            image=image, image_id=key, file_name=info.get("file_name", f"{key}.jpg"), boxes_xywh=boxes,
            segmentations=[a.get("segmentation") for a in anns],
            annotation_ids=np.array([a.get("id", i) for i, a in enumerate(anns)], dtype=np.int64),
            areas=np.array([a.get("area", 0) for a in anns], dtype=np.float64), points=points)


def _box_center_xywh(box: list[float]) -> list[float]:
    """Fallback point for an annotation without ``point_coords``: the box centre."""
    x, y, w, h = (float(v) for v in box)
    return [x + w / 2.0, y + h / 2.0]
