"""Reading ``--proposals`` files: both forms, clipping to the image, and one clear line per bad file."""

from __future__ import annotations

import json
import re

import pytest

from edgesam_core.errors import ConfigError, InputError
from edgesam_core.inference.box_proposals import load_box_proposals
from edgesam_core.inference.segment_prompts import build_prompts


def test_a_plain_list_fits_any_one_image_and_is_clipped(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text("[[-2, 5, 40, 30], [10, 10, 200, 99.5]]")
    proposals = load_box_proposals(path)
    assert proposals.is_single_list
    assert proposals.boxes_for("any.jpg", 64, 48) == [(0.0, 5.0, 40.0, 30.0), (10.0, 10.0, 64.0, 48.0)]
    assert proposals.signature()["file"] == "boxes.json" and len(proposals.signature()["sha256"]) == 64


def test_a_mapping_gives_each_image_its_boxes(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.jpg": [[1, 2, 3, 4]], "b.jpg": []}))
    proposals = load_box_proposals(path)
    assert not proposals.is_single_list
    assert proposals.boxes_for("a.jpg", 10, 10) == [(1.0, 2.0, 3.0, 4.0)]
    assert proposals.boxes_for("b.jpg", 10, 10) == []
    with pytest.raises(InputError, match=r'no boxes for c.jpg: add "c.jpg"'):
        proposals.boxes_for("c.jpg", 10, 10)
    with pytest.raises(InputError, match="lies outside a.jpg"):
        proposals.boxes_for("a.jpg", 1, 1)  # clipped to nothing


@pytest.mark.parametrize(("text", "message"), [
    ("[[1, 2, 3", "not JSON (line 1)"),
    ("{}", "holds no boxes"),
    ('"boxes"', "holds no boxes"),
    ('{"a.jpg": [1, 2, 3, 4]}', "box 0 is 1"),
    ("[[1, 2, 3]]", "box 0 is [1, 2, 3]"),
    ("[[1, 2, 3, 4], [5, 5, 5, 9]]", "box 1 is [5, 5, 5, 9]"),
    ('[[1, 2, "3", 4]]', "each box is [x0, y0, x1, y1]"),
    ("[[1, 2, NaN, 4]]", "box 0"),
    ('{"a.jpg": {"box": [1, 2, 3, 4]}}', "expected a list of boxes"),
])
def test_malformed_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "boxes.json"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        load_box_proposals(path)


def test_option_rules(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text("[[1, 2, 3, 4]]")
    with pytest.raises(InputError, match="Proposals file not found"):
        build_prompts(everything=True, proposals=tmp_path / "none.json")
    with pytest.raises(ConfigError, match="add --everything"):
        build_prompts(points=["1,1"], proposals=path)
    with pytest.raises(ConfigError, match="--fast"):
        build_prompts(everything=True, fast=True, proposals=path)
    assert build_prompts(everything=True, proposals=path).proposals.boxes_for("x.png", 9, 9) == [(1, 2, 3, 4)]
