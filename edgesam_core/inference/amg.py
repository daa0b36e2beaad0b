"""Mask utilities for automatic mask generation: RLE, stability score, boxes, NMS, crops and point grids.

The algorithms follow SAM's ``utils/amg.py`` (so results match upstream), written without torchvision:
box IoU and greedy NMS are implemented here in plain torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Any

import numpy as np
import torch

from edgesam_core.deps import require
from edgesam_core.models.sam import stability_score

_Column = list | np.ndarray | torch.Tensor


class MaskData:
    """Named columns (tensors, arrays or lists) of equal length that are filtered and concatenated together."""

    def __init__(self, **columns: _Column) -> None:
        for key, value in columns.items():
            self._check(key, value)
        self._columns: dict[str, Any] = dict(columns)

    @staticmethod
    def _check(key: str, value: object) -> None:
        if not isinstance(value, (list, np.ndarray, torch.Tensor)):
            raise TypeError(f"MaskData column {key!r} must be a list, numpy array or tensor, got {type(value)}")

    def __setitem__(self, key: str, value: _Column) -> None:
        self._check(key, value)
        self._columns[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._columns[key]

    def __delitem__(self, key: str) -> None:
        del self._columns[key]

    def __contains__(self, key: str) -> bool:
        return key in self._columns

    def items(self):
        """The ``(name, column)`` pairs."""
        return self._columns.items()

    def filter(self, keep: torch.Tensor) -> None:
        """Keep the rows selected by ``keep`` (a bool mask or an index tensor) in every column."""
        keep = torch.as_tensor(keep)
        keep_np = keep.detach().cpu().numpy()
        if keep.dtype == torch.bool:
            index = np.flatnonzero(keep_np).tolist()
        else:
            index = keep_np.reshape(-1).tolist()
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value[keep.to(value.device)]
            elif isinstance(value, np.ndarray):
                self._columns[key] = value[keep_np]
            else:
                self._columns[key] = [value[i] for i in index]

    def cat(self, other: MaskData) -> None:
        """Append the rows of ``other`` (columns missing here are adopted as they are)."""
        for key, value in other.items():
            mine = self._columns.get(key)
            if mine is None:
                self._columns[key] = value
            elif isinstance(value, torch.Tensor):
                self._columns[key] = torch.cat([mine, value.to(mine.device)], dim=0)
            elif isinstance(value, np.ndarray):
                self._columns[key] = np.concatenate([mine, value], axis=0)
            else:
                self._columns[key] = list(mine) + list(value)

    def to_numpy(self) -> None:
        """Convert every tensor column to a numpy array."""
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value.detach().cpu().numpy()


def batch_iterator(batch_size: int, *arrays: Sequence[Any]) -> Iterator[list[Any]]:
    """Yield aligned slices of ``batch_size`` rows from each of ``arrays`` (the last one may be shorter)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not arrays or any(len(a) != len(arrays[0]) for a in arrays):
        raise ValueError("batch_iterator needs one or more inputs of the same length")
    for start in range(0, len(arrays[0]), batch_size):
        yield [a[start:start + batch_size] for a in arrays]


# -- masks and RLE ---------------------------------------------------------------------------------------


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """SAM's name for :func:`edgesam_core.models.sam.stability_score` (NaN for an all-background mask)."""
    return stability_score(masks, mask_threshold, threshold_offset)


def stability_score_numpy(logits: np.ndarray, mask_threshold: float = 0.0, threshold_offset: float = 1.0) -> np.ndarray:
    """:func:`calculate_stability_score` for numpy ``...xHxW`` logits (float32 result; NaN for an empty mask)."""
    tensor = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return stability_score(tensor, mask_threshold, threshold_offset).numpy()


def mask_to_rle_pytorch(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Encode ``BxHxW`` bool masks as uncompressed COCO RLEs (column-major run lengths, background first).

    Returns:
        One ``{"size": [H, W], "counts": [int, ...]}`` per mask; ``counts`` alternates background and
        foreground runs and starts with a (possibly zero) background run.
    """
    b, h, w = masks.shape
    flat = masks.permute(0, 2, 1).reshape(b, h * w).bool()
    changes = (flat[:, 1:] ^ flat[:, :-1]).nonzero()
    rles = []
    for i in range(b):
        idx = changes[changes[:, 0] == i, 1] + 1
        bounds = torch.cat([idx.new_zeros(1), idx, idx.new_full((1,), h * w)])
        runs = (bounds[1:] - bounds[:-1]).tolist()
        counts = runs if not bool(flat[i, 0]) else [0, *runs]
        rles.append({"size": [h, w], "counts": counts})
    return rles


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode an uncompressed RLE (as produced by :func:`mask_to_rle_pytorch`) into an ``HxW`` bool array."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h * w} for size {h}x{w}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T.copy()


def area_from_rle(rle: dict[str, Any]) -> int:
    """Foreground pixel count of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_mask_api() -> Any:
    """``pycocotools.mask``, or a MissingDependencyError naming the package."""
    require("pycocotools", purpose="COCO RLE output")
    from pycocotools import mask as mask_utils

    return mask_utils


def coco_encode_rle(uncompressed: dict[str, Any]) -> dict[str, Any]:
    """Compress an uncompressed RLE with pycocotools; ``counts`` becomes a str so the result is JSON-ready."""
    mask_utils = coco_mask_api()
    h, w = uncompressed["size"]
    rle = mask_utils.frPyObjects(uncompressed, h, w)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_binary_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO-compressed RLE of one ``HxW`` bool mask, with ``counts`` as str."""
    mask_utils = coco_mask_api()
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``mode="islands"``) smaller than ``area_thresh`` pixels.

    Connected components use 8-connectivity (as SAM's OpenCV call). When every island is small the largest
    is kept, so a mask never becomes empty through this step.

    Returns:
        ``(mask, changed)``.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    require("scipy", purpose="min_mask_region_area > 0")
    from scipy import ndimage

    fill_holes = mode == "holes"
    working = mask != fill_holes  # holes: label the background; islands: label the foreground
    labels, n = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    keep = np.setdiff1d(np.arange(1, n + 1), small)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True


# -- boxes ----------------------------------------------------------------------------------------------


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (inclusive pixel indices) around ``...xHxW`` bool masks; ``[0, 0, 0, 0]`` for empty masks."""
    *lead, h, w = masks.shape
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.long, device=masks.device)
    flat = masks.reshape(-1, h, w).bool()
    rows = flat.any(dim=-1)  # N x H
    cols = flat.any(dim=-2)  # N x W
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    bottom = torch.where(rows, ys, -1).amax(dim=-1)
    top = torch.where(rows, ys, h).amin(dim=-1)
    right = torch.where(cols, xs, -1).amax(dim=-1)
    left = torch.where(cols, xs, w).amin(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    boxes[empty] = 0
    return boxes.reshape(*lead, 4)


def box_xyxy_to_xywh(box: torch.Tensor) -> torch.Tensor:
    """Convert a ``(..., 4)`` xyxy box to xywh (width = x1 - x0, as SAM reports it)."""
    out = box.clone()
    out[..., 2] = box[..., 2] - box[..., 0]
    out[..., 3] = box[..., 3] - box[..., 1]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``Nx4`` xyxy boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (``NxM``) of xyxy boxes; 0 where the union is empty."""
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression (same rule as torchvision's ``nms``).

    Boxes are visited by decreasing score; a box is dropped when its IoU with an already kept box is
    strictly greater than ``iou_threshold``.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= over[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """True for crop-frame boxes that touch the crop's border where it is not also the image border."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


# -- crops and point grids ------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n^2 x 2`` xy points at the centres of an ``n x n`` grid over [0, 1]^2 (x varies fastest)."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One point grid per crop layer; layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (xyxy) of every layer, the whole image first; layer ``i`` has ``(2**i)**2`` crops.

    Returns:
        ``(crop_boxes, layer_indices)``.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for layer in range(n_layers):
        per_side = 2 ** (layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + im_w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + im_h) / per_side)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer + 1)
    return boxes, layers


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Shift crop-frame xyxy boxes (``Nx4`` or ``NxCx4``) back to the image frame."""
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([x0, y0, x0, y0], device=boxes.device, dtype=boxes.dtype)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Shift crop-frame xy points (``Nx2`` or ``NxCx2``) back to the image frame."""
    offset = torch.tensor([crop_box[0], crop_box[1]], device=points.device, dtype=points.dtype)
    return points + offset


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Zero-pad ``NxhxW`` crop masks back to the full ``orig_h x orig_w`` image."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)
