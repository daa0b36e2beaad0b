"""Pure metric functions for promptable-segmentation evaluation (numpy and scipy only, no torch).

Masks are boolean ``H x W`` numpy arrays in original image pixels. Points are ``(x, y)`` pixel indices
(column, row), the frame :class:`~edgesam_core.inference.SamPredictor` expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# COCO's object-size thresholds, on the ground-truth area in original pixels.
SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks.

    Args:
        pred: ``H x W`` predicted mask (bool or 0/1).
        target: ``H x W`` reference mask of the same shape.

    Returns:
        ``|pred & target| / |pred | target|`` in [0, 1]; 1.0 when both masks are empty (they agree).

    Raises:
        ValueError: if the shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs target {target.shape}")
    pred = pred.astype(bool, copy=False)
    target = target.astype(bool, copy=False)
    union = int(np.count_nonzero(pred | target))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred & target)) / union


def size_bucket(area: float) -> str:
    """COCO size bucket of an object: ``small`` (< 32²), ``medium`` (< 96²) or ``large``."""
    if area < SMALL_MAX_AREA:
        return "small"
    if area < MEDIUM_MAX_AREA:
        return "medium"
    return "large"


@dataclass(frozen=True)
class Click:
    """A corrective click: ``(x, y)`` pixel indices and label 1 (add, false negative) or 0 (remove)."""

    x: int
    y: int
    label: int


def _largest_component(region: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 4-connected component of ``region`` (ties: the first in scan order) and its size."""
    from scipy import ndimage

    labels, count = ndimage.label(region)
    if count == 0:
        return np.zeros_like(region, dtype=bool), 0
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes))
    return labels == best + 1, int(sizes[best])


def _bbox_slices(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the tight bounding box of ``mask`` (None when empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def deepest_pixel(mask: np.ndarray) -> tuple[int, int]:
    """Row and column of the pixel of a non-empty mask farthest from its boundary.

    The mask is zero-padded first so that the image border counts as a boundary: a region touching the
    border gets its point pulled inwards instead of onto the edge. Elongated shapes have a whole ridge of
    maxima; the one nearest to the ridge's mean is taken (ties: first in row-major order), so the point
    sits in the middle of the ridge rather than at its top end.

    Raises:
        ValueError: if the mask is empty.
    """
    from scipy import ndimage

    box = _bbox_slices(mask)
    if box is None:
        raise ValueError("cannot take the centre of an empty mask")
    # Working on the bounding box gives the same distances (everything outside it is background anyway)
    # and keeps full-resolution SA-1B masks cheap.
    crop = mask[box].astype(bool)
    dist = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    ridge = np.argwhere(dist >= dist.max() - 1e-6)
    nearest = int(np.argmin(((ridge - ridge.mean(axis=0)) ** 2).sum(axis=1)))
    row, col = ridge[nearest]
    return int(row) + box[0].start, int(col) + box[1].start


def refinement_click(pred: np.ndarray, target: np.ndarray) -> Click | None:
    """Place the next corrective click at the centre of the largest error region.

    False negatives (target but not predicted) and false positives (predicted but not target) are split
    into 4-connected components separately, so every component is of one kind and the label is unambiguous.
    The largest component wins (ties: false negatives first); the click goes to its distance-transform
    maximum, the pixel farthest from the component's boundary.

    Args:
        pred: ``H x W`` predicted mask.
        target: ``H x W`` ground-truth (or reference) mask.

    Returns:
        The click, label 1 for a false-negative region and 0 for a false-positive one; None when the
        prediction already equals the target.

    Raises:
        ValueError: if the shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs target {target.shape}")
    pred = pred.astype(bool, copy=False)
    target = target.astype(bool, copy=False)
    box = _bbox_slices(pred ^ target)
    if box is None:
        return None
    # Components and distances only depend on the pixels inside the error region's bounding box.
    pred, target = pred[box], target[box]
    fn_comp, fn_size = _largest_component(target & ~pred)
    fp_comp, fp_size = _largest_component(pred & ~target)
    if fn_size >= fp_size:
        row, col = deepest_pixel(fn_comp)
        label = 1
    else:
        row, col = deepest_pixel(fp_comp)
        label = 0
    return Click(x=col + box[1].start, y=row + box[0].start, label=label)


@dataclass(frozen=True)
class MIoU:
    """Mean IoU (x100) over ``count`` prompts; ``miou`` is NaN when ``count`` is 0."""

    miou: float
    count: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"miou": None if math.isnan(self.miou) else round(self.miou, 4), "count": self.count}


def mean_iou(ious: Iterable[float]) -> MIoU:
    """Mean of the finite IoUs, x100, with how many were averaged (NaNs are dropped, as upstream)."""
    values = np.asarray([v for v in ious if not math.isnan(v)], dtype=np.float64)
    if values.size == 0:
        return MIoU(float("nan"), 0)
    return MIoU(float(values.mean() * 100.0), int(values.size))


def aggregate_miou(ious: np.ndarray, buckets: Sequence[str]) -> list[dict[str, MIoU]]:
    """mIoU per click, overall and per COCO size bucket (instance-level: every prompt weighs the same).

    Args:
        ious: ``P x K`` IoUs of ``P`` prompts after each of ``K`` clicks (click 1 = the initial prompt);
            NaN marks a missing value.
        buckets: size bucket of each of the ``P`` prompts.

    Returns:
        ``K`` dicts with keys ``all``, ``small``, ``medium``, ``large``.

    Raises:
        ValueError: if the lengths disagree.
    """
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2 or ious.shape[0] != len(buckets):
        raise ValueError(f"expected a P x K IoU array with P = {len(buckets)}, got shape {ious.shape}")
    bucket_arr = np.asarray(buckets, dtype=object)
    unknown = set(bucket_arr.tolist()) - set(SIZE_BUCKETS)
    if unknown:
        raise ValueError(f"unknown size buckets {sorted(unknown)}; expected {SIZE_BUCKETS}")
    result = []
    for k in range(ious.shape[1]):
        column = ious[:, k]
        entry = {"all": mean_iou(column.tolist())}
        for name in SIZE_BUCKETS:
            entry[name] = mean_iou(column[bucket_arr == name].tolist())
        result.append(entry)
    return result
