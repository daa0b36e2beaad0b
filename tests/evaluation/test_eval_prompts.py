"""Prompt construction: GT box, distance-transform centre, seeded random point, correct box centre."""

from __future__ import annotations

import numpy as np
import pytest

from edgesam_core.errors import ConfigError
from edgesam_core.evaluation.eval_prompts import box_center, box_from_mask, make_prompt, mask_center


def test_mask_center_is_deepest_pixel_and_inside():
    mask = np.zeros((30, 40), bool)
    mask[5:25, 10:20] = True  # 20 rows x 10 cols
    mask[12:18, 20:38] = True  # a thin arm that must not attract the centre
    x, y = mask_center(mask)
    assert mask[y, x]
    assert 14 <= x <= 15 and 12 <= y <= 17
    # An L-shape whose centroid lies outside the mask: the centre stays inside.
    ell = np.zeros((20, 20), bool)
    ell[0:20, 0:4] = True
    ell[16:20, 0:20] = True
    x, y = mask_center(ell)
    assert ell[y, x]


def test_box_center_is_not_upstreams_bug():
    box = np.array([10.0, 20.0, 50.0, 100.0])  # x0, y0, x1, y1
    assert box_center(box) == (30.0, 60.0)  # upstream computed ((x0+y0)/2, (x1+y1)/2) = (15, 75)
    prompt = make_prompt("box-center", np.ones((120, 60), bool), box)
    np.testing.assert_array_equal(prompt.points, [[30.0, 60.0]])
    assert prompt.box is None and prompt.labels.tolist() == [1]


def test_box_from_mask_uses_pixel_edges():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    np.testing.assert_array_equal(box_from_mask(mask), [3, 2, 9, 5])


def test_random_point_is_seeded_and_inside():
    mask = np.zeros((50, 50), bool)
    mask[10:40, 5:15] = True
    a = make_prompt("point-random", mask, box_from_mask(mask), np.random.default_rng(3))
    b = make_prompt("point-random", mask, box_from_mask(mask), np.random.default_rng(3))
    np.testing.assert_array_equal(a.points, b.points)
    x, y = a.points[0].astype(int)
    assert mask[y, x]
    with pytest.raises(ConfigError):
        make_prompt("point-random", mask, box_from_mask(mask), None)


def test_with_click_keeps_box_and_appends():
    mask = np.ones((8, 8), bool)
    p = make_prompt("box", mask, np.array([0, 0, 8, 8]))
    assert p.points is None
    p = p.with_click(3, 4, 0).with_click(1, 2, 1)
    np.testing.assert_array_equal(p.points, [[3, 4], [1, 2]])
    assert p.labels.tolist() == [0, 1] and p.box is not None


def test_unknown_prompt_type():
    with pytest.raises(ConfigError, match="Unknown prompt type"):
        make_prompt("scribble", np.ones((2, 2), bool), np.array([0, 0, 2, 2]))
