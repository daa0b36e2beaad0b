"""Metric functions on hand-built masks: IoU, COCO size buckets, refinement clicks, aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgesam_core.evaluation.metrics import (
    MEDIUM_MAX_AREA,
    SMALL_MAX_AREA,
    aggregate_miou,
    mask_iou,
    mean_iou,
    refinement_click,
    size_bucket,
)


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_iou_hand_computed():
    a = _box(10, 10, 0, 4, 0, 4)  # 16 px
    b = _box(10, 10, 2, 6, 2, 6)  # 16 px, overlap 2x2 = 4
    assert mask_iou(a, b) == pytest.approx(4 / 28)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert mask_iou(a.astype(np.uint8), b.astype(np.uint8)) == pytest.approx(4 / 28)


def test_mask_iou_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_size_buckets_at_coco_boundaries():
    assert SMALL_MAX_AREA == 1024 and MEDIUM_MAX_AREA == 9216
    assert size_bucket(0) == "small"
    assert size_bucket(1023.9) == "small"
    assert size_bucket(1024) == "medium"
    assert size_bucket(9215) == "medium"
    assert size_bucket(9216) == "large"
    assert size_bucket(1e7) == "large"


def test_refinement_click_false_negative_at_region_centre():
    target = _box(40, 40, 5, 35, 5, 35)
    pred = _box(40, 40, 5, 35, 5, 15)  # misses columns 15..34: an FN region 30 rows x 20 cols
    click = refinement_click(pred, target)
    assert click is not None and click.label == 1
    assert target[click.y, click.x] and not pred[click.y, click.x]
    # Deepest pixel of the 20-wide FN band (columns 15..34): column 24 or 25, middle row 19 or 20.
    assert click.x in (24, 25) and click.y in (19, 20)


def test_refinement_click_false_positive_label_zero():
    target = _box(40, 40, 10, 20, 10, 20)
    pred = target | _box(40, 40, 25, 39, 25, 39)  # a 14x14 spurious blob
    click = refinement_click(pred, target)
    assert click is not None and click.label == 0
    assert pred[click.y, click.x] and not target[click.y, click.x]
    assert 30 <= click.x <= 33 and 30 <= click.y <= 33


def test_refinement_click_picks_largest_component():
    target = np.zeros((50, 50), bool)
    pred = np.zeros((50, 50), bool)
    target[0:5, 0:5] = True  # small FN (25 px)
    pred[20:40, 20:40] = True  # large FP (400 px)
    click = refinement_click(pred, target)
    assert click.label == 0 and 20 <= click.x < 40 and 20 <= click.y < 40
    pred[20:40, 20:40] = False
    target[30:49, 30:49] = True  # now the large region is an FN (361 px) next to the small FN
    click = refinement_click(pred, target)
    assert click.label == 1 and 30 <= click.x < 49 and 30 <= click.y < 49


def test_refinement_click_region_touching_border_is_pulled_inwards():
    target = _box(20, 20, 0, 20, 0, 10)  # left half, touching three borders
    click = refinement_click(np.zeros_like(target), target)
    assert click.label == 1 and 3 <= click.x <= 6 and 8 <= click.y <= 11


def test_refinement_click_none_when_perfect():
    m = _box(8, 8, 1, 5, 1, 5)
    assert refinement_click(m, m) is None


def test_mean_and_aggregate_miou():
    assert mean_iou([0.5, 1.0, float("nan")]).miou == pytest.approx(75.0)
    assert mean_iou([0.5, 1.0, float("nan")]).count == 2
    empty = mean_iou([])
    assert math.isnan(empty.miou) and empty.count == 0 and empty.to_dict() == {"miou": None, "count": 0}
    ious = np.array([[0.2, 0.4], [0.6, 0.8], [1.0, 1.0]])
    out = aggregate_miou(ious, ["small", "large", "large"])
    assert len(out) == 2
    assert out[0]["all"].miou == pytest.approx(60.0) and out[0]["all"].count == 3
    assert out[0]["small"].miou == pytest.approx(20.0) and out[0]["small"].count == 1
    assert out[1]["large"].miou == pytest.approx(90.0) and out[1]["large"].count == 2
    assert out[1]["medium"].count == 0 and math.isnan(out[1]["medium"].miou)
    with pytest.raises(ValueError, match="unknown size buckets"):
        aggregate_miou(ious, ["small", "huge", "large"])
    with pytest.raises(ValueError, match="P x K"):
        aggregate_miou(ious, ["small"])


def _click_without_cropping(pred, target):
    """Reference: the same rule computed on the whole image (the implementation crops for speed)."""
    from scipy import ndimage

    best = None
    for region, label in ((target & ~pred, 1), (pred & ~target, 0)):
        labels, n = ndimage.label(region)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if best is None or sizes.max() > best[0]:
            best = (sizes.max(), labels == np.argmax(sizes) + 1, label)
    _, comp, label = best
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    ridge = np.argwhere(dist >= dist.max() - 1e-6)
    row, col = ridge[np.argmin(((ridge - ridge.mean(axis=0)) ** 2).sum(axis=1))]
    return int(col), int(row), label


def test_refinement_click_matches_uncropped_reference_on_random_masks():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(25):
        target = ndimage.binary_opening(rng.random((48, 64)) < 0.55, iterations=2)
        pred = ndimage.binary_opening(rng.random((48, 64)) < 0.55, iterations=2)
        if not (pred ^ target).any():
            continue
        click = refinement_click(pred, target)
        assert (click.x, click.y, click.label) == _click_without_cropping(pred, target)
