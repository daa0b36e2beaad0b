"""One segmentation decoder for training data and evaluation ground truth: every stored form, both callers."""

from __future__ import annotations

import numpy as np
import pytest

from edgesam_core.data.prompt_sampling import decode_segmentation
from edgesam_core.errors import DatasetError
from edgesam_core.evaluation.samples import EvalObject

H, W = 37, 53


def _reference_mask() -> np.ndarray:
    """A non-rectangular mask with a hole and scattered single pixels (long and short runs)."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:30, 7:40] = 1
    mask[10:15, 12:20] = 0
    mask[np.random.default_rng(0).random((H, W)) < 0.05] ^= 1
    return mask


def _column_major_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: alternating 0/1 run lengths in column-major order, starting with 0s."""
    flat = mask.flatten(order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


POLYGONS = [[5.0, 5.0, 40.0, 6.0, 30.0, 30.0, 8.0, 25.0], [42.0, 2.0, 50.0, 2.0, 50.0, 12.0]]


def _forms() -> dict[str, object]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(_reference_mask()))
    return {
        "rle-bytes": {"size": list(rle["size"]), "counts": rle["counts"]},
        "rle-str": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "rle-uncompressed": {"size": [H, W], "counts": _column_major_runs(_reference_mask())},
        "polygons": POLYGONS,
        "polygons-empty": [],
    }


def _expected(form: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if form == "polygons":
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(POLYGONS, H, W)))
    if form == "polygons-empty":
        return np.zeros((H, W), dtype=np.uint8)
    return _reference_mask()


def _eval_object(segmentation: object) -> EvalObject:
    return EvalObject(ann_id=1, segmentation=segmentation, height=H, width=W, box=np.zeros(4, np.float32), area=-1.0)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
@pytest.mark.parametrize("form", ["rle-bytes", "rle-str", "rle-uncompressed", "polygons", "polygons-empty"])
def test_training_and_evaluation_decode_every_form_to_the_same_mask(form):
    segmentation = _forms()[form]
    expected = _expected(form)
    training = decode_segmentation(segmentation, H, W)  # what the SA-1B/COCO datasets call
    ground_truth = _eval_object(segmentation).mask()  # what evaluate() scores against
    assert training.dtype == np.uint8 and training.shape == (H, W)
    assert ground_truth.dtype == np.bool_ and ground_truth.shape == (H, W)
    np.testing.assert_array_equal(training, expected)
    np.testing.assert_array_equal(ground_truth, expected.astype(bool))
    if form != "polygons-empty":
        assert 0 < int(training.sum()) < H * W


@pytest.mark.parametrize("segmentation,match", [
    ({"size": [H + 1, W], "counts": [H * W]}, "differs"),
    ({"counts": "abc"}, "Unrecognised segmentation"),
    ("not a segmentation", "Unrecognised segmentation"),
])
def test_both_callers_reject_bad_segmentations_with_a_dataset_error(segmentation, match):
    with pytest.raises(DatasetError, match=match):
        decode_segmentation(segmentation, H, W)
    with pytest.raises(DatasetError, match=match):
        _eval_object(segmentation).mask()
