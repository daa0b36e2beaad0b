"""SamPredictor on tiny models: shapes, dtypes, options, batching, HQ, and parity with upstream's pipeline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgesam_core.errors import InputError
from edgesam_core.inference import Prediction, Predictor, SamPredictor
from tests.helpers.perturb import perturb_prompt_path

POINTS = np.array([[30.0, 40.0], [80.0, 20.0]])
LABELS = np.array([1, 0])
BOX = np.array([10.0, 5.0, 100.0, 70.0])


@pytest.fixture(scope="module")
def predictor(debug_model, small_image):
    p = SamPredictor(debug_model)
    p.set_image(small_image)
    return p


@pytest.mark.parametrize(
    ("prompt", "count"),
    [({"point_coords": POINTS, "point_labels": LABELS}, 3),
     ({"box": BOX}, 1),
     ({"point_coords": POINTS, "point_labels": LABELS, "box": BOX[None]}, 4)],
)
def test_predict_shapes_and_dtypes(predictor, prompt, count):
    masks, scores, low_res = predictor.predict(**prompt, num_multimask_outputs=count)
    assert masks.shape == (count, 90, 120) and masks.dtype == bool
    assert scores.shape == (count,) and scores.dtype == np.float32
    assert low_res.shape == (count, 32, 32) and low_res.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(low_res).all()


def test_predictor_satisfies_protocol(predictor):
    assert isinstance(predictor, Predictor)
    assert predictor.original_size == (90, 120) and predictor.input_size == (96, 128)
    assert predictor.get_image_embedding().shape == (1, 32, 8, 8)


def test_multimask_options(predictor):
    kw = {"point_coords": POINTS[:1], "point_labels": LABELS[:1]}
    four = predictor.predict(**kw, num_multimask_outputs=4)
    three = predictor.predict(**kw, multimask_output=True)
    one = predictor.predict(**kw, multimask_output=False)
    # 1 -> token 0, 3 -> tokens 1-3, 4 -> tokens 0-3 (same decoder run).
    np.testing.assert_allclose(one.low_res_logits[0], four.low_res_logits[0], atol=1e-5)
    np.testing.assert_allclose(three.low_res_logits, four.low_res_logits[1:], atol=1e-5)
    np.testing.assert_allclose(three.scores, four.scores[1:], atol=1e-6)
    assert len(predictor.predict(**kw)) == 3  # default: 3 masks, 3 return values
    assert predictor.predict(**kw).masks.shape[0] == 3
    with pytest.raises(ValueError, match="pass only one"):
        predictor.predict(**kw, num_multimask_outputs=1, multimask_output=True)
    with pytest.raises(ValueError, match="one of"):
        predictor.predict(**kw, num_multimask_outputs=2)


def test_logits_and_stability_scores(predictor):
    kw = {"point_coords": POINTS, "point_labels": LABELS, "num_multimask_outputs": 4}
    logits, _, low_res = predictor.predict(**kw, return_logits=True)
    masks = predictor.predict(**kw).masks
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(masks, logits > 0)
    stab = predictor.predict(**kw, use_stability_score=True).scores
    high = (low_res > 1).sum(axis=(1, 2))
    low = (low_res > -1).sum(axis=(1, 2))
    np.testing.assert_allclose(stab, high / low, rtol=1e-6)


def test_mask_input_round_trip(predictor):
    first = predictor.predict(point_coords=POINTS, point_labels=LABELS, num_multimask_outputs=1)
    second = predictor.predict(point_coords=POINTS, point_labels=LABELS, mask_input=first.low_res_logits,
                               num_multimask_outputs=1)
    assert second.masks.shape == (1, 90, 120)
    assert not np.allclose(second.low_res_logits, first.low_res_logits)  # the mask prompt is used


def test_predict_matches_predict_torch(predictor):
    ours = predictor.predict(point_coords=POINTS, point_labels=LABELS, box=BOX, num_multimask_outputs=4,
                             return_logits=True)
    t = predictor.transform
    coords = torch.as_tensor(t.apply_coords(POINTS, predictor.original_size), dtype=torch.float)[None]
    boxes = torch.as_tensor(t.apply_boxes(BOX, predictor.original_size), dtype=torch.float)
    masks, scores, low_res = predictor.predict_torch(coords, torch.as_tensor(LABELS)[None], boxes,
                                                     num_multimask_outputs=4, return_logits=True)
    np.testing.assert_allclose(masks[0].numpy(), ours.masks, atol=1e-6)
    np.testing.assert_allclose(scores[0].numpy(), ours.scores, atol=1e-6)
    np.testing.assert_allclose(low_res[0].numpy(), ours.low_res_logits, atol=1e-6)


def test_predict_torch_batch_equals_one_by_one(predictor):
    """Each row of a prompt batch gets the same result as a call with that row alone (tolerance 1e-4)."""
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(5, 2, 2, generator=g) * torch.tensor([128.0, 96.0])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 0]])
    boxes = torch.tensor([[5.0, 5.0, 60.0, 50.0]]).repeat(5, 1) + torch.arange(5.0)[:, None]
    masks, scores, low_res = predictor.predict_torch(coords, labels, boxes, num_multimask_outputs=3)
    assert masks.shape == (5, 3, 90, 120) and masks.dtype == torch.bool and scores.shape == (5, 3)
    for i in range(5):
        _, s_i, lr_i = predictor.predict_torch(coords[i:i + 1], labels[i:i + 1], boxes[i:i + 1],
                                               num_multimask_outputs=3)
        torch.testing.assert_close(lr_i[0], low_res[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(s_i[0], scores[i], atol=1e-4, rtol=0)


def test_input_validation(debug_model, small_image):
    p = SamPredictor(debug_model)
    with pytest.raises(InputError, match="No image set"):
        p.predict(point_coords=POINTS, point_labels=LABELS)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        p.set_image(small_image.astype(np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        p.set_image(small_image[..., 0])
    p.set_image(small_image)
    with pytest.raises(ValueError, match="together"):
        p.predict(point_coords=POINTS)
    with pytest.raises(ValueError, match="Nx2"):
        p.predict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="shape"):
        p.predict(point_coords=POINTS, point_labels=np.array([1]))
    with pytest.raises(ValueError, match="1 \\(foreground\\) or 0"):
        p.predict(point_coords=POINTS, point_labels=np.array([1, 5]))
    with pytest.raises(ValueError, match="box must be 4"):
        p.predict(box=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="mask_input"):
        p.predict(box=BOX, mask_input=np.zeros((1, 64, 64)))
    with pytest.raises(ValueError, match="HQ model"):
        p.predict(box=BOX, return_sam_masks=True)
    with pytest.raises(ValueError, match="batch sizes differ"):
        p.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), torch.zeros(3, 4))
    p.reset_image()
    assert not p.is_image_set


def test_bgr_input_is_flipped(debug_model, small_image):
    p = SamPredictor(debug_model)
    p.set_image(small_image)
    rgb = p.get_image_embedding().clone()
    p.set_image(np.ascontiguousarray(small_image[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(p.get_image_embedding(), rgb)


def test_hq_predictor(hq_model, small_image):
    p = SamPredictor(hq_model)
    p.set_image(small_image)
    assert p.is_hq
    masks, scores, low_res = p.predict(point_coords=POINTS, point_labels=LABELS, num_multimask_outputs=3)
    assert masks.shape == (1, 90, 120) and scores.shape == (1,) and low_res.shape == (1, 32, 32)
    full = p.predict(box=BOX, return_sam_masks=True, return_logits=True)
    assert len(full) == 4 and isinstance(full, Prediction)
    hq_logits, _, _hq_low, sam_logits = full
    assert sam_logits.shape == (1, 90, 120) and full.low_res_sam_logits.shape == (1, 32, 32)
    # The SAM mask is token 0 of the same decoder; it is a different head from the HQ mask.
    assert not np.allclose(sam_logits, hq_logits)
    # Batched HQ prompts: one HQ mask per prompt row.
    m, s, _lr, sam = p.predict_torch(torch.rand(3, 1, 2) * 90, torch.ones(3, 1, dtype=torch.int),
                                    return_sam_masks=True)
    assert m.shape == (3, 1, 90, 120) and sam.shape == (3, 1, 90, 120) and s.shape == (3, 1)


# -- parity with an independent re-implementation of upstream's pipeline ----------------------------------

def test_parity_with_reference_pipeline(debug_model, photo_factory, reference_pipeline):
    """Predictor internals equal the plain pipeline: logits to 1e-5 absolute, identical binary masks."""
    image = photo_factory(77, 101, seed=3)  # odd size: non-trivial rounding and padding
    p = SamPredictor(debug_model)
    p.set_image(image)
    box = np.array([5.0, 7.0, 90.0, 60.0])
    ours = p.predict(point_coords=POINTS, point_labels=LABELS, box=box, num_multimask_outputs=4,
                     return_logits=True)
    ref_logits, ref_iou, ref_low = reference_pipeline(debug_model, image, POINTS, LABELS, box, 4)
    np.testing.assert_allclose(ours.low_res_logits, ref_low, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.scores, ref_iou, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.masks, ref_logits, atol=1e-5, rtol=0)
    binary = p.predict(point_coords=POINTS, point_labels=LABELS, box=box, num_multimask_outputs=4).masks
    np.testing.assert_array_equal(binary, ref_logits > 0)


def test_best_only_keeps_the_most_stable_candidate_and_caches_the_dense_pe(debug_model, small_image):
    # Perturbed decoder weights so the four candidates differ (fresh decoders give near-identical ones).
    model = perturb_prompt_path(copy.deepcopy(debug_model), seed=7, scale=0.5)
    predictor = SamPredictor(model)
    predictor.set_image(small_image)
    assert torch.equal(predictor.dense_pe, model.prompt_encoder.get_dense_pe())
    chosen = set()
    rng = np.random.default_rng(0)
    for _ in range(12):
        point = rng.uniform([0, 0], [120, 90], size=(1, 2))
        prompt = {"point_coords": point, "point_labels": np.array([1])}
        full = predictor.predict(**prompt, num_multimask_outputs=4, use_stability_score=True)
        ious = predictor.predict(**prompt, num_multimask_outputs=4).scores
        keep = int(np.argmax(np.nan_to_num(full.scores, nan=-1.0)))
        chosen.add(keep)
        best = predictor.predict(**prompt, num_multimask_outputs=4, best_only=True)
        assert best.masks.shape == (1, 90, 120)
        np.testing.assert_array_equal(best.masks[0], full.masks[keep])
        np.testing.assert_array_equal(best.low_res_logits[0], full.low_res_logits[keep])
        assert best.scores[0] == pytest.approx(ious[keep], abs=1e-6)
        stable = predictor.predict(**prompt, num_multimask_outputs=4, best_only=True, use_stability_score=True)
        assert stable.scores[0] == pytest.approx(full.scores[keep], abs=1e-6)
    # Some prompt must pick a candidate other than the first, or keeping index 0 would pass unnoticed.
    assert chosen - {0}, "every prompt picked candidate 0: the test would not see a wrong index"

