"""The everything-mode prompt benchmark: its oracle answers with the true masks, and the real mask generator over
it finds exactly the objects its grid reaches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_everything_prompts.py"


def _disc(cx: float, cy: float, r: float, shape=(768, 1024)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_grids_find_what_their_points_reach():
    from benchmarks.bench_everything_prompts import OraclePredictor, recall
    from edgesam_core.inference import SamAutomaticMaskGenerator
    from edgesam_core.inference.segment_prompts import FAST_EVERYTHING

    big = _disc(512, 384, 150)
    # Inside the big disc, on the 16x16 grid point (480, 360), which fast mode's coarse-to-fine order visits after
    # (544, 408) in its first batch has already covered the big disc.
    part = _disc(480, 360, 26)
    tiny = _disc(16, 12, 5)  # on a 32x32 grid point (16 + 32 j, 12 + 24 i), 20 px from every 16x16 point
    objects = [{"mask": big | part, "radius": 150.0, "part": False}, {"mask": part, "radius": 26.0, "part": True},
               {"mask": tiny, "radius": 5.0, "part": False}]
    image = np.zeros((768, 1024, 3), dtype=np.uint8)
    found = {}
    for name, opts in {"32": {"points_per_side": 32, "points_per_batch": 64},
                       "16": {"points_per_side": 16, "points_per_batch": 64}, "fast": FAST_EVERYTHING}.items():
        oracle = OraclePredictor(objects)
        found[name] = recall(SamAutomaticMaskGenerator(oracle, **opts).generate(image), objects)
        assert oracle.prompts == {"32": 1024, "16": 256, "fast": 80}[name]
    assert found["32"]["all"] == [3, 3] and found["32"]["small"] == [1, 1]
    assert found["16"]["small"] == [0, 1] and found["16"]["parts"] == [1, 1] and found["16"]["large"] == [1, 1]
    # Fast mode skips points inside the kept whole: the part inside it is what it trades.
    assert found["fast"]["large"] == [1, 1] and found["fast"]["parts"] == [0, 1]


def test_box_oracle_answers_the_best_overlapping_object():
    """A box gets the object whose box overlaps it best (IoU >= 0.5): a part's box its part, a whole's box the
    whole, a box over nothing or over too little of an object no mask; the generator then keeps the part and the
    whole (different boxes)."""
    import torch

    from benchmarks.bench_everything_prompts import OraclePredictor, recall
    from edgesam_core.inference import SamAutomaticMaskGenerator

    big, part = _disc(512, 384, 150), _disc(480, 360, 26)
    objects = [{"mask": big | part, "radius": 150.0, "part": False}, {"mask": part, "radius": 26.0, "part": True}]
    oracle = OraclePredictor(objects)
    oracle.set_image(np.zeros((768, 1024, 3), dtype=np.uint8))
    boxes = torch.tensor([[454.0, 334, 507, 387], [362, 234, 663, 535], [0, 0, 40, 40], [362, 234, 450, 535]])
    scores, logits = oracle.predict_low_res_torch(None, None, 1, False, boxes=boxes)
    assert scores[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]  # last: a third of the whole's box (IoU 0.29)
    assert torch.equal(logits[0, 0] > 0, torch.from_numpy(part)) and torch.equal(logits[1, 0] > 0,
                                                                                 torch.from_numpy(big | part))
    records = SamAutomaticMaskGenerator(oracle).generate(np.zeros((768, 1024, 3), np.uint8), boxes=boxes.numpy())
    assert recall(records, objects)["all"] == [2, 2] and oracle.prompts == 8


def test_bench_everything_prompts_reports_every_strategy(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(SCRIPT), "--scenes", "1", "--objects", "6", "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())["strategies"]
    assert set(result) == {"sam_32x32", "grid_16x16", "fast", "fast_no_budget", "boxes_every_object",
                           "boxes_detector"}
    # Every object's true box: one prompt per object, and the generator keeps every mask they ask for.
    every = result["boxes_every_object"]
    assert every["prompts_per_image"] == every["objects"]["all"]["objects"] == every["objects"]["all"]["found"]
    assert result["sam_32x32"]["prompts_per_image"] == 1024 and result["grid_16x16"]["prompts_per_image"] == 256
    assert result["fast"]["prompts_per_image"] <= 80
    totals = {name: entry["objects"]["all"]["objects"] for name, entry in result.items()}
    assert len(set(totals.values())) == 1 and totals["fast"] >= 6  # the same scene for every strategy
    for entry in result.values():
        for bucket in entry["objects"].values():
            assert 0 <= bucket["found"] <= bucket["objects"]
