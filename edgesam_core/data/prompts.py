"""Prompt and mask helpers shared by the datasets, distillation and evaluation.

Fixes two upstream defects: prompts are subsampled *without* replacement (upstream drew indices with
``torch.randint``, so an image could train on the same box twice), and box centres are
``((x0 + x1) / 2, (y0 + y1) / 2)`` (upstream mixed x and y).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from edgesam_core.deps import require
from edgesam_core.errors import DatasetError


def prompt_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """A generator that depends only on ``(seed, epoch, index)``, so sampling is reproducible per item
    whatever the worker, process or order it is requested in."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def sample_prompt_indices(count: int, max_prompts: int, rng: np.random.Generator) -> np.ndarray:
    """Pick at most ``max_prompts`` of ``count`` annotations, without replacement.

    Args:
        count: number of annotations of the image.
        max_prompts: upper bound; ``<= 0`` keeps every annotation.
        rng: source of randomness (see :func:`prompt_rng`).

    Returns:
        Sorted int64 indices, all distinct.
    """
    if max_prompts <= 0 or count <= max_prompts:
        return np.arange(count, dtype=np.int64)
    return np.sort(rng.choice(count, size=max_prompts, replace=False)).astype(np.int64)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``Nx4`` boxes from ``(x, y, w, h)`` to ``(x0, y0, x1, y1)`` (float64 copy)."""
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return out


def box_centers(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Centres ``Nx2`` (x, y) of ``Nx4`` xyxy boxes."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)


def mask_center_point(mask: np.ndarray) -> np.ndarray:
    """A point ``(x, y)`` that lies inside ``mask``: its centroid, or the mask pixel nearest to it when
    the centroid falls outside (rings, crescents). Returns ``(nan, nan)`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.array([np.nan, np.nan])
    cx, cy = xs.mean(), ys.mean()
    ix, iy = int(round(cx)), int(round(cy))
    if 0 <= iy < mask.shape[0] and 0 <= ix < mask.shape[1] and mask[iy, ix]:
        return np.array([float(ix), float(iy)])
    k = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    return np.array([float(xs[k]), float(ys[k])])


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO-style segmentation into an ``HxW`` uint8 mask of 0/1.

    The one decoder for training data (SA-1B/COCO datasets) and evaluation ground truth. Accepts polygon
    lists (an empty list is an empty mask), uncompressed RLE (``counts`` as a list of run lengths) and
    compressed RLE (``counts`` as a string or bytes), as SA-1B and COCO store them.

    Raises:
        DatasetError: the segmentation has none of these forms, or its RLE ``size`` is not
            ``height x width`` (the annotation belongs to another image).
    """
    mask_utils = require("pycocotools.mask", purpose="decoding SA-1B/COCO masks")
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise DatasetError(f"A mask of size {size[0]}x{size[1]} (HxW) differs from its image's size "
                               f"{height}x{width}; the annotation does not belong to this image")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise DatasetError(f"Unrecognised segmentation format ({type(segmentation).__name__}): expected "
                           "polygons or an RLE dict with 'size' and 'counts'")
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation on every call; it is harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode(rle)
    return np.ascontiguousarray(mask.reshape(height, width), dtype=np.uint8)
