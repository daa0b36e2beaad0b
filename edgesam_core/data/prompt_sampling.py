"""Prompt and mask helpers shared by the datasets, distillation and evaluation.

Fixes two upstream defects: prompts are subsampled *without* replacement (upstream drew indices with
``torch.randint``, so an image could train on the same box twice), and box centres are
``((x0 + x1) / 2, (y0 + y1) / 2)`` (upstream mixed x and y).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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


# --- HQ step (spec §3.8): prompts drawn from a ground-truth mask -----------------------------------------

HQ_FOREGROUND = 128
"""HQSeg-44K masks are 0-255 grey levels: ``> 128`` is foreground, ``< 128`` background (128 is neither)."""


@dataclass
class HQPrompt:
    """The prompt of one HQ training image, in the model input frame.

    ``box`` is the tight xyxy box of the foreground (inclusive pixel indices, as upstream); ``points`` ``Kx2``
    (x, y) pixel indices with ``labels`` ``K`` (1 positive, 0 negative); ``use_box`` says whether the box
    is part of the prompt (``K == 0`` implies it is).
    """

    box: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    use_box: bool


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight ``(x_min, y_min, x_max, y_max)`` float box of a boolean mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def sample_mask_pixels(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` distinct pixels of a boolean mask, uniformly at random, as ``Nx2`` (x, y) floats."""
    flat = np.flatnonzero(mask)
    if len(flat) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    pick = flat[rng.choice(len(flat), size=min(k, len(flat)), replace=False)]
    rows, cols = np.divmod(pick, mask.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float64)


def sample_hq_prompt(gt: np.ndarray, valid_hw: tuple[int, int], rng: np.random.Generator,
                     candidates: int = 5) -> HQPrompt | None:
    """Draw the prompt of one image from its ground-truth mask, with upstream's rules (spec §3.8).

    ``candidates`` positive and negative pixels are drawn; ``n_pos ~ U{1..max(1, P-1)}`` of the P positives
    are kept, and with probability 0.5 (when there are negatives) ``n_neg ~ U{0..N-1}``; the box is used with
    probability 0.5 and, when it is, the points are dropped with probability 0.25.

    Differences from upstream, on purpose: a crop with exactly one foreground pixel keeps that point
    (upstream's ``randint(1, 1)`` raised, §9.2); negatives come only from the real image area
    ``[0, h) x [0, w)``, never from the black padding; an empty mask yields None (no prompt, so the image
    is left out of the loss) instead of a box of 1e8 sentinels.

    Args:
        gt: ``HxW`` uint8 mask (0-255) in the model input frame.
        valid_hw: ``(h, w)`` of the unpadded image area.
        rng: source of randomness.
        candidates: positive / negative pixels drawn before choosing how many to keep (5 upstream).
    """
    foreground = gt > HQ_FOREGROUND
    box = mask_box(foreground)
    if box is None:
        return None
    background = gt < HQ_FOREGROUND
    h, w = valid_hw
    background[h:, :] = False
    background[:, w:] = False
    pos = sample_mask_pixels(foreground, candidates, rng)
    neg = sample_mask_pixels(background, candidates, rng)
    n_pos = int(rng.integers(1, max(len(pos) - 1, 1) + 1))
    n_neg = int(rng.integers(0, len(neg))) if len(neg) > 0 and rng.random() > 0.5 else 0
    points = np.concatenate([pos[:n_pos], neg[:n_neg]])
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    use_box = bool(rng.random() > 0.5)
    if use_box and rng.random() < 0.25:
        points, labels = points[:0], labels[:0]
    if len(points) == 0:  # upstream's "neither box nor points left: use the box"
        use_box = True
    return HQPrompt(box=box, points=points, labels=labels, use_box=use_box)
