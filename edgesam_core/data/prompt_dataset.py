"""Shared machinery of the SA-1B and COCO datasets: model-ready images plus box/point prompts.

Each item is ``(image, target)``: ``image`` is the ``3xSxS`` float32 tensor the model consumes (resized so
the longest side is ``S`` with antialiased bilinear interpolation, normalised with the SAM pixel mean/std,
zero-padded bottom/right), and ``target`` a dict whose prompts live in the same resized frame:

- ``prompt_box``: ``Px4`` float32 xyxy boxes.
- ``prompt_point``: ``Px1x2`` float32 (x, y) points (absent for COCO without ``point_source``).
- ``img_size_before_pad``: ``(h, w)`` of the resized image; ``original_size``: ``(H, W)`` of the file.
- ``image_id`` (file stem for SA-1B, the numeric id as text for COCO), ``file_name``, ``annotation_ids``
  (``P`` int64), ``area`` (``P`` float32, original pixels).
- ``gt_mask``: ``PxSxS`` uint8 masks, resized with nearest neighbour and padded, when ``load_gt_masks``.

A sample whose image or annotation cannot be read is reported by file name and, with
``on_error="skip"``, replaced by the next readable one, so one bad file never ends a long run.
"""

from __future__ import annotations

import abc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgesam_core.data.prompt_sampling import decode_segmentation, prompt_rng, sample_prompt_indices, xywh_to_xyxy
from edgesam_core.errors import DatasetError

logger = logging.getLogger(__name__)
_MAX_SKIPS_IN_A_ROW = 64


@dataclass
class RawSample:
    """One image with its annotations, before resizing and prompt sampling (original pixel frame)."""

    image: np.ndarray                    # HxWx3 uint8 RGB
    image_id: str
    file_name: str
    boxes_xywh: np.ndarray               # Nx4
    segmentations: list[Any]             # N COCO segmentations, decoded lazily
    annotation_ids: np.ndarray           # N
    areas: np.ndarray                    # N
    points: np.ndarray | None = None     # Nx2, or None when the format has none
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-annotation arrays (e.g. category ids)


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``HxWx3`` uint8 RGB (fully decoded, so truncation is caught here)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return np.array(img.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays


def load_json(path: Path) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class PromptDataset(Dataset, abc.ABC):
    """Base class; subclasses implement ``__len__``, :meth:`_load` and :meth:`_describe`.

    Args:
        img_size: model input size ``S`` (1024 for full-size models).
        max_prompts: at most this many annotations per image, drawn without replacement (``<= 0``: all).
        seed: sampling seed; item ``i`` always gets the same prompts for the same ``(seed, epoch)``.
        load_gt_masks: also return the sampled annotations' masks.
        on_error: ``"skip"`` (log, count, use the next sample) or ``"raise"`` (:class:`DatasetError`).
    """

    def __init__(self, img_size: int = 1024, max_prompts: int = 16, seed: int = 0, load_gt_masks: bool = False,
                 on_error: str = "skip") -> None:
        from edgesam_core.data.transforms import PIXEL_MEAN, PIXEL_STD, ResizeLongestSide

        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.img_size = int(img_size)
        self.max_prompts = int(max_prompts)
        self.seed = int(seed)
        self.epoch = 0
        self.load_gt_masks = load_gt_masks
        self.on_error = on_error
        self.transform = ResizeLongestSide(self.img_size)
        self.pixel_mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(3, 1, 1)
        self.pixel_std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(3, 1, 1)
        self.skipped: dict[str, str] = {}

    # -- subclass hooks -------------------------------------------------------------------------------
    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abc.abstractmethod
    def _load(self, index: int) -> RawSample:
        """Read image ``index`` and its annotations (raise ``OSError``/``ValueError`` when unreadable)."""

    @abc.abstractmethod
    def _describe(self, index: int) -> str:
        """The file(s) behind ``index``, for error messages."""

    # -- public -----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still reproducible) prompt subset per epoch."""
        self.epoch = int(epoch)

    @property
    def num_skipped(self) -> int:
        """How many unreadable samples were skipped so far (in this process)."""
        return len(self.skipped)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for attempt in range(min(n, _MAX_SKIPS_IN_A_ROW)):
            current = (index + attempt) % n
            try:
                return self._build(current, self._load(current))
            except (OSError, ValueError, KeyError, TypeError, IndexError, DatasetError) as exc:
                where = self._describe(current)
                reason = f"{type(exc).__name__}: {exc}"
                if self.on_error == "raise":
                    raise DatasetError(f"Cannot read {where} ({reason}); fix or delete the file, or use "
                                       "on_error='skip'") from exc
                if where not in self.skipped:
                    self.skipped[where] = reason
                    logger.warning("skipping unreadable sample %s (%s); %d skipped so far", where, reason,
                                   len(self.skipped))
        raise DatasetError(f"{min(n, _MAX_SKIPS_IN_A_ROW)} samples in a row are unreadable (last: "
                           f"{self._describe(current)}); check the dataset folder")

    # -- building ---------------------------------------------------------------------------------------
    def _build(self, index: int, raw: RawSample) -> tuple[torch.Tensor, dict[str, Any]]:
        height, width = raw.image.shape[:2]
        chosen = sample_prompt_indices(len(raw.boxes_xywh), self.max_prompts,
                                       prompt_rng(self.seed, index, self.epoch))
        image = torch.from_numpy(np.ascontiguousarray(raw.image)).permute(2, 0, 1)[None].float()
        resized = self.transform.apply_image_torch(image)[0]
        h, w = resized.shape[-2:]
        padded = torch.zeros(3, self.img_size, self.img_size, dtype=torch.float32)
        padded[:, :h, :w] = (resized - self.pixel_mean) / self.pixel_std

        boxes = self.transform.apply_boxes(xywh_to_xyxy(raw.boxes_xywh[chosen]), (height, width))
        target: dict[str, Any] = {
            "prompt_box": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "img_size_before_pad": (int(h), int(w)),
            "original_size": (int(height), int(width)),
            "image_id": raw.image_id,
            "file_name": raw.file_name,
            "annotation_ids": torch.from_numpy(np.asarray(raw.annotation_ids, dtype=np.int64)[chosen]),
            "area": torch.from_numpy(np.asarray(raw.areas, dtype=np.float32)[chosen]),
        }
        if raw.points is not None:
            points = self.transform.apply_coords(np.asarray(raw.points, dtype=np.float64)[chosen].reshape(-1, 1, 2),
                                                 (height, width))
            target["prompt_point"] = torch.from_numpy(points.astype(np.float32)).reshape(-1, 1, 2)
        for key, values in raw.extra.items():
            target[key] = torch.from_numpy(np.asarray(values)[chosen])
        if self.load_gt_masks:
            target["gt_mask"] = self._masks(raw, chosen, height, width, h, w)
        return padded, target

    def _masks(self, raw: RawSample, chosen: np.ndarray, height: int, width: int, h: int, w: int) -> torch.Tensor:
        out = torch.zeros(len(chosen), self.img_size, self.img_size, dtype=torch.uint8)
        if len(chosen) == 0:
            return out
        masks = np.stack([decode_segmentation(raw.segmentations[i], height, width) for i in chosen])
        resized = self.transform.apply_masks_torch(torch.from_numpy(masks))
        out[:, :h, :w] = resized.to(torch.uint8)
        return out
