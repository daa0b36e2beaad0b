"""EdgeSAM's own mIoU protocol (``evaluation/eval_mIoU.py``), for numbers comparable with upstream's.

Our default protocol scores against the exact ground truth and places refinement clicks deterministically.
Upstream instead (spec §5.1):

* resizes each GT mask to the model frame with torch's ``nearest`` mode, and at scoring time resizes that
  back to the original size bilinearly and keeps every pixel ``> 0`` - a GT grown by about one model-frame
  pixel, which lowers the IoU of a perfect mask, most for small objects;
* draws each refinement click uniformly from the pixels where the low-res prediction and the GT (bilinearly
  downsampled to the low-res grid, ``> 0``) disagree inside the valid (unpadded) area, labels it 1 on a
  false negative and 0 on a false positive, scales it by ``img_size / low_res`` (no half-pixel shift), and
  emits ``(0, 0)`` with the ignore label -2 when fewer than 10 pixels disagree.

* keeps at most 64 objects per image by ``torch.randint`` indices drawn after ``torch.manual_seed(index)``
  (with replacement: an object can be scored twice), and reads images in the dataset's own order (SA-1B: the
  unsorted directory listing; COCO: the JSON's order);
* places the ``point-center`` click at the maximum of kornia's (approximate) distance transform of the GT in
  the padded model frame, first maximum in row-major order.

Resampling is numpy with torch's rules reproduced exactly; the subset and the centre click use torch and kornia
as upstream does.
"""

from __future__ import annotations

import numpy as np

from ..data.transforms import ResizeLongestSide
from ..inference.onnx_predictor import resize_bilinear
from .metrics import Click

#: Fewer disagreeing low-res pixels than this and upstream emits an ignored click (label -2).
MIN_ERROR_PIXELS = 10
IGNORE_LABEL = -2


def upstream_subset(num_objects: int, max_prompts: int | None, index: int) -> list[int]:
    """Indices of the objects upstream evaluates for image ``index``: all, or ``max_prompts`` drawn with
    replacement by ``torch.randint`` after seeding with the image's position (``fix_seed``)."""
    import torch

    if max_prompts is None or max_prompts <= 0 or num_objects <= max_prompts:
        return list(range(num_objects))
    generator = torch.Generator().manual_seed(int(index))  # the same stream as torch.manual_seed(index)
    return [int(i) for i in torch.randint(0, num_objects, (int(max_prompts),), generator=generator)]


def _model_frame_mask(gt: np.ndarray, img_size: int) -> np.ndarray:
    """The GT nearest-resized to the model frame and zero-padded to ``img_size`` square (upstream's gt_mask)."""
    h, w = gt.shape
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    frame = np.zeros((img_size, img_size), np.float32)
    frame[:new_h, :new_w] = ResizeLongestSide(img_size).apply_masks(gt[None].astype(np.uint8))[0]
    return frame


def upstream_mask_center(gt: np.ndarray, img_size: int) -> tuple[float, float]:
    """Upstream's ``mask-center`` click, in original-image pixels.

    kornia's ``distance_transform`` of the padded model-frame GT (a one-pixel zero border added, as upstream),
    its first maximum in row-major order, mapped from the model frame back to the original image so the
    predictor puts it exactly where upstream's click lands.

    Raises:
        MissingDependencyError: kornia is not installed (``pip install kornia``).
    """
    import torch
    import torch.nn.functional as F

    from ..deps import require

    kornia = require("kornia", purpose="upstream's mask-centre click (--protocol upstream --prompt point-center)")
    h, w = gt.shape
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    mask = torch.from_numpy(_model_frame_mask(gt, img_size) > 0.5)[None, None]
    with torch.no_grad():
        depth = kornia.contrib.distance_transform((~F.pad(mask, (1, 1, 1, 1), value=False)).float())
    flat = int(depth[:, :, 1:-1, 1:-1].argmax())
    row, col = flat // img_size, flat % img_size
    return col * w / new_w, row * h / new_h


def upstream_target(gt: np.ndarray, img_size: int) -> np.ndarray:
    """The GT mask upstream scores against: nearest to the model frame, bilinear back, ``> 0``.

    Args:
        gt: ``H x W`` bool ground-truth mask in original pixels.
        img_size: model input side (1024).

    Returns:
        ``H x W`` bool mask.
    """
    h, w = gt.shape
    small = ResizeLongestSide(img_size).apply_masks(gt[None].astype(np.uint8))[0].astype(np.float32)
    return resize_bilinear(small, h, w) > 0


def upstream_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU as upstream computes it: NaN (dropped from the mean) when both masks are empty."""
    union = int(np.count_nonzero(pred | target))
    if union == 0:
        return float("nan")
    return int(np.count_nonzero(pred & target)) / union


def upstream_click(low_res_logits: np.ndarray, gt: np.ndarray, img_size: int,
                   rng: np.random.Generator) -> tuple[Click, tuple[float, float]]:
    """Draw one refinement click the way upstream does.

    Args:
        low_res_logits: ``s x s`` logits of the kept mask (``s`` = 256 for full-size models).
        gt: ``H x W`` bool target in original pixels.
        img_size: model input side (1024).
        rng: the generator to draw from (seed it per object for reproducible runs).

    Returns:
        The click in the low-res grid (``x``, ``y`` integer cells; label 1, 0 or -2) and the same point in
        original-image pixels, ready for ``predictor.predict`` (which maps it back to the model frame).
    """
    h, w = gt.shape
    side = int(low_res_logits.shape[-1])
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    frame = np.zeros((img_size, img_size), np.float32)
    frame[:new_h, :new_w] = ResizeLongestSide(img_size).apply_masks(gt[None].astype(np.uint8))[0]
    valid = np.zeros((img_size, img_size), np.float32)
    valid[:new_h, :new_w] = 1.0
    valid_down = resize_bilinear(valid, side, side)
    pred = (low_res_logits > 0).astype(np.float32) * valid_down
    target = (resize_bilinear(frame, side, side) > 0).astype(np.float32) * valid_down
    differ = pred != target
    # A boundary cell whose valid weight is fractional counts only as a false positive, as upstream.
    false_pos = differ & (target == 0)
    false_neg = differ & (target == 1)
    region = false_pos | false_neg
    if int(np.count_nonzero(region)) < MIN_ERROR_PIXELS:
        return Click(0, 0, IGNORE_LABEL), (0.0, 0.0)
    rows, cols = np.nonzero(region)  # row-major, the order torch's boolean indexing uses
    i = int(rng.integers(rows.size))
    row, col = int(rows[i]), int(cols[i])
    label = 1 if false_neg[row, col] else 0
    x_frame, y_frame = col / side * img_size, row / side * img_size
    return Click(col, row, label), (x_frame * w / new_w, y_frame * h / new_h)
