"""Prompt parsing and validation for `edgesam segment` (torch-free)."""

from __future__ import annotations

import pytest

from edgesam_core.errors import ConfigError, InputError
from edgesam_core.inference.segment_prompts import (
    build_prompts,
    check_prompts_fit,
    parse_box,
    parse_point,
)


def test_parse_point_and_box():
    assert parse_point("500,375") == (500.0, 375.0)
    assert parse_point(" 1.5 , 2 ") == (1.5, 2.0)
    assert parse_box("1,2,30,40") == (1.0, 2.0, 30.0, 40.0)


@pytest.mark.parametrize("text", ["500", "500;375", "a,b", "1,2,3", "", "nan,1", "inf,2"])
def test_malformed_point(text):
    with pytest.raises(InputError, match="Malformed --point"):
        parse_point(text)


def test_box_errors():
    with pytest.raises(InputError, match=r"x1 \(5\) must be greater than x0 \(10\)"):
        parse_box("10,10,5,20")
    with pytest.raises(InputError, match="y1"):
        parse_box("0,10,5,10")
    with pytest.raises(InputError, match="Malformed --box"):
        parse_box("1,2,3")


def test_build_prompts_labels_and_negatives():
    p = build_prompts(["1,2", "3,4"], [1, 0], ["5,6"], ["0,0,10,10", "1,1,9,9"])
    assert p.points == ((1, 2), (3, 4), (5, 6)) and p.labels == (1, 0, 0)
    sets = p.prompt_sets()
    assert len(sets) == 2 and sets[1]["box"] == [1, 1, 9, 9] and sets[0]["labels"] == [1, 0, 0]
    assert build_prompts(["1,2"]).labels == (1,)
    assert build_prompts(everything=True).prompt_sets() == [{"points": [], "labels": [], "box": None}]


def test_build_prompts_errors():
    with pytest.raises(InputError, match="No prompt given"):
        build_prompts()
    with pytest.raises(ConfigError, match="one --label per"):
        build_prompts(["1,2", "3,4"], [1])
    with pytest.raises(InputError, match="--label must be 1"):
        build_prompts(["1,2"], [2])
    with pytest.raises(ConfigError, match="--everything"):
        build_prompts(["1,2"], everything=True)


def test_check_prompts_fit():
    check_prompts_fit(build_prompts(["0,0", "640,480"], boxes=["0,0,640,480"]), 640, 480, "a.jpg")
    with pytest.raises(InputError, match=r"Point 641,10 is outside a.jpg \(640x480\)"):
        check_prompts_fit(build_prompts(["641,10"]), 640, 480, "a.jpg")
    with pytest.raises(InputError, match="Box .* is outside"):
        check_prompts_fit(build_prompts(boxes=["10,10,700,20"]), 640, 480, "a.jpg")
