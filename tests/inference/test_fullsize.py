"""Full-size edge_sam_dyt (1024 input) from an upstream-format checkpoint on a real photograph.

One image encoding (~1-3 s on CPU) is shared by every check in this module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_core.inference import SamPredictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fullsize(tmp_path_factory, photo):
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fullsize") / "edge_sam_dyt_train.pth"
    torch.save({"model": build_sam("edge_sam_dyt").state_dict(), "epoch": 3}, path)  # training-file layout
    model = build_sam("edge_sam_dyt", checkpoint=path)
    predictor = SamPredictor(model)
    predictor.set_image(photo)
    return model, predictor, photo


def test_fullsize_prompts(fullsize):
    _model, predictor, photo = fullsize
    h, w = photo.shape[:2]
    scale = 1024 / max(h, w)
    assert predictor.input_size == (int(h * scale + 0.5), int(w * scale + 0.5))  # (1024, 874) for 600x512
    assert predictor.get_image_embedding().shape == (1, 256, 64, 64)
    point = np.array([[min(500, w - 1), min(375, h - 1)]], dtype=np.float64)
    box = np.array([w * 0.2, h * 0.1, w * 0.8, h * 0.9])
    for kwargs, count in [({"point_coords": point, "point_labels": np.array([1])}, 3),
                          ({"box": box, "num_multimask_outputs": 1}, 1),
                          ({"point_coords": point, "point_labels": np.array([1]), "box": box,
                            "num_multimask_outputs": 4, "use_stability_score": True}, 4)]:
        masks, scores, low_res = predictor.predict(**kwargs)
        assert masks.shape == (count, h, w) and masks.dtype == bool
        assert scores.shape == (count,) and scores.dtype == np.float32 and np.isfinite(scores).all()
        assert low_res.shape == (count, 256, 256) and low_res.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()  # stability scores


def test_fullsize_parity_with_reference_pipeline(fullsize, reference_pipeline):
    """Same numbers as the plain upstream pipeline (PIL resize, normalise, pad, decode, upscale): atol 1e-4."""
    model, predictor, photo = fullsize
    h, w = photo.shape[:2]
    coords = np.array([[w * 0.5, h * 0.4], [w * 0.1, h * 0.9]])
    labels = np.array([1, 0])
    box = np.array([w * 0.25, h * 0.15, w * 0.75, h * 0.85])
    ours = predictor.predict(point_coords=coords, point_labels=labels, box=box, num_multimask_outputs=4,
                             return_logits=True)
    ref_logits, ref_iou, ref_low = reference_pipeline(model, photo, coords, labels, box, 4)
    np.testing.assert_allclose(ours.low_res_logits, ref_low, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.scores, ref_iou, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.masks, ref_logits, atol=1e-4, rtol=0)
