"""HQ-step prompts from a ground-truth mask (spec §3.8): 5 candidate positives / negatives, 1-4 positives and
0-4 negatives kept, box with p 0.5 and points dropped with p 0.25 then, the tight box, and the edge cases
upstream crashed on or mishandled (one foreground pixel, empty masks, negatives in the padding)."""

from __future__ import annotations

import numpy as np

from edgesam_core.data.prompt_sampling import mask_box, prompt_rng, sample_hq_prompt


def _mask() -> np.ndarray:
    gt = np.zeros((40, 50), np.uint8)
    gt[10:20, 5:30] = 255
    gt[20, 7] = 200  # a lone foreground pixel below the block extends the box
    gt[25:30, 5:30] = 128  # exactly 128: neither foreground nor background
    return gt


def test_counts_labels_and_pixel_classes_over_many_draws():
    gt = _mask()
    n_pos, n_neg, boxes, dropped = [], [], 0, 0
    for i in range(2000):
        p = sample_hq_prompt(gt, (35, 45), prompt_rng(0, i))
        assert p is not None
        np.testing.assert_array_equal(p.box, [5, 10, 29, 20])
        pos, neg = p.points[p.labels == 1].astype(int), p.points[p.labels == 0].astype(int)
        assert np.all(p.labels[: len(pos)] == 1)  # positives first, then negatives
        assert all(gt[y, x] > 128 for x, y in pos) and all(gt[y, x] < 128 for x, y in neg)
        assert all(y < 35 and x < 45 for x, y in neg)  # never in the padding
        assert len({(x, y) for x, y in p.points.astype(int)}) == len(p.points)  # distinct pixels
        boxes += p.use_box
        if len(p.points) == 0:
            dropped += 1
            assert p.use_box
        else:
            n_pos.append(len(pos))
            n_neg.append(len(neg))
    assert set(n_pos) == {1, 2, 3, 4} and set(n_neg) == {0, 1, 2, 3, 4}
    assert 0.45 < boxes / 2000 < 0.55
    assert 0.10 < dropped / 2000 < 0.15  # 0.5 * 0.25
    assert 0.55 < np.mean(np.array(n_neg) == 0) < 0.70  # 0.5 + 0.5 * 1/5


def test_one_foreground_pixel_keeps_it_as_the_only_positive():
    gt = np.zeros((16, 16), np.uint8)
    gt[3, 11] = 255
    for i in range(50):
        p = sample_hq_prompt(gt, (16, 16), prompt_rng(1, i))
        np.testing.assert_array_equal(p.box, [11, 3, 11, 3])
        if len(p.points):
            np.testing.assert_array_equal(p.points[0], [11, 3])
            assert p.labels[0] == 1 and (p.labels == 1).sum() == 1


def test_empty_mask_gives_no_prompt_and_no_box():
    gt = np.full((16, 16), 128, np.uint8)
    gt[:4] = 0
    assert sample_hq_prompt(gt, (16, 16), prompt_rng(0, 0)) is None
    assert mask_box(gt > 128) is None


def test_same_rng_same_prompt():
    a = sample_hq_prompt(_mask(), (40, 50), prompt_rng(4, 7, 2))
    b = sample_hq_prompt(_mask(), (40, 50), prompt_rng(4, 7, 2))
    np.testing.assert_array_equal(a.points, b.points)
    assert a.use_box == b.use_box
