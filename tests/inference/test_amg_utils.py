"""Mask utilities: RLE round trips (vs pycocotools), stability score, boxes, NMS, crops, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_core.inference import amg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2


def _random_masks(n=6, h=13, w=17, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) > 0.6
    masks[1] = False  # empty
    masks[2] = True  # full
    masks[3] = False
    masks[3, 4:9, 2:5] = True  # one rectangle
    return masks


def test_rle_round_trip_and_matches_pycocotools():
    from pycocotools import mask as mask_utils

    masks = _random_masks()
    rles = amg.mask_to_rle_pytorch(torch.as_tensor(masks))
    for mask, rle in zip(masks, rles):
        assert rle["size"] == [13, 17]
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)
        assert amg.area_from_rle(rle) == mask.sum()
        coco = amg.coco_encode_rle(rle)
        assert isinstance(coco["counts"], str)
        decoded = mask_utils.decode({**coco, "counts": coco["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        assert coco == amg.encode_binary_mask(mask)


def test_rle_to_mask_rejects_inconsistent_counts():
    with pytest.raises(ValueError, match="sum to"):
        amg.rle_to_mask({"size": [2, 2], "counts": [1, 1]})


def test_stability_score_by_hand():
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, :2, :2] = 3.0  # 4 pixels above +1
    logits[0, 2, :] = 0.5  # 4 pixels in (-1, +1]
    score = amg.calculate_stability_score(logits, 0.0, 1.0)
    assert score.dtype == torch.float32
    assert score.item() == pytest.approx(4 / 8)


def test_batched_mask_to_box_matches_naive():
    masks = _random_masks()
    boxes = amg.batched_mask_to_box(torch.as_tensor(masks))
    for mask, box in zip(masks, boxes.tolist()):
        ys, xs = np.nonzero(mask)
        expected = [0, 0, 0, 0] if xs.size == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]
        assert box == expected
    nested = amg.batched_mask_to_box(torch.as_tensor(masks).reshape(2, 3, 13, 17))
    assert nested.shape == (2, 3, 4)
    assert amg.batched_mask_to_box(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def _naive_nms(boxes, scores, thresh):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x1, y1 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0, x1 - x0) * max(0, y1 - y0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
            union = area(boxes[i]) + area(boxes[j]) - inter
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_matches_naive_and_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 50
    wh = torch.rand(60, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(60, generator=g)
    keep = amg.nms(boxes, scores, 0.3)
    assert keep.tolist() == _naive_nms(boxes.tolist(), scores.tolist(), 0.3)
    assert 5 < len(keep) < 60
    try:
        from torchvision.ops import nms as tv_nms
    except ImportError:  # torchvision is optional; the naive check above already covers the rule
        return
    assert keep.tolist() == tv_nms(boxes, scores, 0.3).tolist()


def test_nms_empty_and_identical():
    assert amg.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    assert amg.nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.7).tolist() == [1, 2]


def test_point_grid_and_crop_boxes():
    grid = amg.build_point_grid(2)
    np.testing.assert_allclose(grid, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    grids = amg.build_all_layer_point_grids(8, 2, 2)
    assert [len(g) for g in grids] == [64, 16, 4]
    boxes, layers = amg.generate_crop_boxes((600, 800), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 800, 600] and layers == [0, 1, 1, 1, 1]
    # Layer 1: 2x2 overlapping crops that cover the image.
    overlap = int(512 / 1500 * 600)
    crop_w = int(np.ceil((overlap + 800) / 2))
    assert boxes[1] == [0, 0, crop_w, int(np.ceil((overlap + 600) / 2))]
    assert max(b[2] for b in boxes[1:]) == 800 and max(b[3] for b in boxes[1:]) == 600


def test_uncrop_helpers_and_edge_filter():
    masks = torch.ones(2, 3, 4, dtype=torch.bool)
    full = amg.uncrop_masks(masks, [5, 2, 9, 5], orig_h=10, orig_w=12)
    assert full.shape == (2, 10, 12) and full[:, 2:5, 5:9].all() and full.sum() == 24
    assert amg.uncrop_boxes_xyxy(torch.tensor([[1, 1, 2, 2]]), [5, 2, 9, 5]).tolist() == [[6, 3, 7, 4]]
    assert amg.uncrop_points(torch.tensor([[1.0, 1.0]]), [5, 2, 9, 5]).tolist() == [[6.0, 3.0]]
    near = amg.is_box_near_crop_edge(torch.tensor([[0, 0, 50, 50], [150, 150, 195, 195]]),
                                     [0, 0, 200, 200], [0, 0, 400, 400])
    assert near.tolist() == [False, True]  # first touches the image border only; second the crop border


def test_remove_small_regions():
    pytest.importorskip("scipy")
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a 1-pixel hole
    mask[17, 17] = True  # a 1-pixel island
    filled, changed = amg.remove_small_regions(mask, 4, "holes")
    assert changed and filled[5, 5] and filled[17, 17]
    cleaned, changed = amg.remove_small_regions(filled, 4, "islands")
    assert changed and not cleaned[17, 17] and cleaned[2:12, 2:12].all()
    same, changed = amg.remove_small_regions(cleaned, 4, "islands")
    assert not changed and (same == cleaned).all()
    tiny = np.zeros((5, 5), dtype=bool)
    tiny[0, 0] = tiny[4, 4] = True
    kept, _ = amg.remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 1  # every island is small: the largest one survives


def test_mask_data_filter_and_cat():
    data = amg.MaskData(a=torch.arange(4), b=np.arange(4) * 10, c=["w", "x", "y", "z"])
    data.filter(torch.tensor([True, False, True, False]))
    assert data["a"].tolist() == [0, 2] and data["b"].tolist() == [0, 20] and data["c"] == ["w", "y"]
    data.cat(amg.MaskData(a=torch.tensor([7]), b=np.array([70]), c=["q"]))
    data.filter(torch.tensor([2, 0]))
    assert data["a"].tolist() == [7, 0] and data["c"] == ["q", "w"]
    data.to_numpy()
    assert isinstance(data["a"], np.ndarray)
    with pytest.raises(TypeError):
        amg.MaskData(bad=3)
