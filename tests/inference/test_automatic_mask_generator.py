"""SamAutomaticMaskGenerator: runs on real tiny models (upstream crashed here) and gives valid, de-duplicated RLEs.

A random tiny model predicts near-constant masks, so the algorithmic checks use a model whose decoder draws
discs around each prompt point (radius per mask token): the masks are then known in closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesam_core.inference import SamAutomaticMaskGenerator, SamPredictor
from edgesam_core.inference.amg import box_iou, generate_crop_boxes

RADII = (3.0, 5.0, 8.0, 12.0)  # low-res pixels (32x32 grid of the debug model), one per mask token

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2


class _PointPrompt(nn.Module):
    """Passes the first point's coordinates (model-input frame) through as the 'sparse embedding'."""

    def forward(self, points=None, boxes=None, masks=None):
        coords = points[0][:, :1, :].float() if points is not None else ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]
        return coords, torch.zeros(coords.shape[0], 1, 1, 1)

    def get_dense_pe(self):
        return torch.zeros(1, 1, 1, 1)


class _DiscDecoder(nn.Module):
    """Logits = slope * (radius_k - distance to the point) on the 32x32 low-res grid."""

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                num_multimask_outputs=1, interm_embeddings=None):
        centre = sparse_prompt_embeddings[:, 0, :] / 4.0  # 128 input frame -> 32 low-res frame
        ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
        dist = ((xs[None] - centre[:, 0, None, None]) ** 2 + (ys[None] - centre[:, 1, None, None]) ** 2).sqrt()
        logits = torch.stack([20.0 * (r - dist) for r in RADII], dim=1)
        iou = torch.full((logits.shape[0], 4), 0.95)
        tokens = {1: slice(0, 1), 3: slice(1, 4), 4: slice(0, 4)}[num_multimask_outputs]
        return logits[:, tokens], iou[:, tokens]


def _disc_model():
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug")
    model.prompt_encoder = _PointPrompt()
    model.mask_decoder = _DiscDecoder()
    return model


def _check_records(records, h, w):
    from pycocotools import mask as mask_utils

    assert records
    for rec in records:
        rle = rec["segmentation"]
        assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
        mask = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
        assert int(mask.sum()) == rec["area"] > 0
        x, y, bw, bh = rec["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, bw, bh) == (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())
        px, py = rec["point_coords"][0]
        assert mask[min(int(py), h - 1), min(int(px), w - 1)]  # the prompting point lies inside its disc
        assert 0.0 <= rec["stability_score"] <= 1.0


def test_generator_on_disc_model_gives_valid_deduplicated_rles(photo_factory):
    image = photo_factory(90, 120)
    generator = SamAutomaticMaskGenerator(_disc_model(), points_per_side=4, output_mode="coco_rle")
    records = generator.generate(image)
    _check_records(records, 90, 120)
    boxes = torch.tensor([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                          for r in records], dtype=torch.float)
    iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
    assert iou.max() <= 0.7  # box NMS at 0.7 removed duplicates
    assert len(records) > 4


def test_generator_crops_and_small_region_postprocessing(photo_factory):
    pytest.importorskip("scipy")
    image = photo_factory(90, 120)
    generator = SamAutomaticMaskGenerator(_disc_model(), points_per_side=4, crop_n_layers=1,
                                          min_mask_region_area=20, output_mode="coco_rle",
                                          crop_n_points_downscale_factor=2)
    records = generator.generate(image)
    _check_records(records, 90, 120)
    crops = {(b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in generate_crop_boxes((90, 120), 1, 512 / 1500)[0]}
    used = {tuple(int(v) for v in r["crop_box"]) for r in records}
    assert used <= crops and len(used) > 1  # masks come from the full image and from crops


def test_binary_mask_and_uncompressed_outputs(photo_factory):
    image = photo_factory(90, 120)
    binary = SamAutomaticMaskGenerator(_disc_model(), points_per_side=3).generate(image)
    assert binary and all(r["segmentation"].dtype == bool and r["segmentation"].shape == (90, 120) for r in binary)
    raw = SamAutomaticMaskGenerator(_disc_model(), points_per_side=3, output_mode="uncompressed_rle").generate(image)
    assert [sum(r["segmentation"]["counts"][1::2]) for r in raw] == [r["area"] for r in binary]


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_dyt_hq_debug"])
def test_generator_runs_on_real_tiny_models(variant, photo_factory):
    """Upstream EdgeSAM-DyT raised here (3-way unpack of a 5-tuple); HQ models give one mask per point."""
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    predictor = SamPredictor(build_sam(variant))
    generator = SamAutomaticMaskGenerator(predictor, points_per_side=4, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0, output_mode="coco_rle")
    records = generator.generate(photo_factory(90, 120))
    # With every threshold at 0, the 16 grid points leave at least one non-empty mask after NMS.
    assert records
    from pycocotools import mask as mask_utils

    for rec in records:
        assert rec["segmentation"]["size"] == [90, 120]
        assert rec["area"] == int(mask_utils.area(rec["segmentation"])) > 0
    assert not predictor.is_image_set  # the generator resets the predictor afterwards


def test_generator_argument_validation(debug_model):
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(debug_model, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(debug_model, output_mode="png")
    with pytest.raises(ValueError, match="num_multimask_outputs"):
        SamAutomaticMaskGenerator(debug_model, num_multimask_outputs=2)


def test_predicted_iou_is_the_low_res_stability_score_by_default(photo_factory):
    """Upstream's generator filters with ``pred_iou_thresh`` on stability scores (its ``predict_torch``
    defaults to ``use_stability_score=True``); ``use_stability_score_for_iou=False`` gives SAM's IoU head."""
    from edgesam_core.data.transforms import ResizeLongestSide

    image = photo_factory(90, 120)
    records = SamAutomaticMaskGenerator(_disc_model(), points_per_side=4).generate(image)
    assert records
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    for rec in records:
        cx, cy = ResizeLongestSide(128).apply_coords(np.asarray(rec["point_coords"]), (90, 120))[0] / 4.0
        logits = [20.0 * (r - np.hypot(xs - cx, ys - cy)) for r in RADII[1:]]  # tokens 1-3 (3 outputs)
        stability = [(lg > 1.0).sum() / (lg > -1.0).sum() for lg in logits]
        assert min(abs(rec["predicted_iou"] - s) for s in stability) < 1e-6
        assert rec["predicted_iou"] != pytest.approx(0.95)
    head = SamAutomaticMaskGenerator(_disc_model(), points_per_side=4, use_stability_score_for_iou=False)
    head_records = head.generate(image)
    assert head_records and all(r["predicted_iou"] == pytest.approx(0.95) for r in head_records)


def test_defaults_are_upstreams(debug_model):
    """SAM's / EdgeSAM's generator defaults (spec §6.3), including 3 masks per point."""
    g = SamAutomaticMaskGenerator(debug_model)
    assert len(g.point_grids) == 1 and g.point_grids[0].shape == (32 * 32, 2)
    assert (g.points_per_batch, g.pred_iou_thresh, g.stability_score_thresh, g.stability_score_offset) == (
        64, 0.88, 0.95, 1.0)
    assert (g.box_nms_thresh, g.crop_n_layers, g.crop_nms_thresh, g.crop_overlap_ratio) == (0.7, 0, 0.7, 512 / 1500)
    assert (g.min_mask_region_area, g.output_mode, g.num_multimask_outputs) == (0, "binary_mask", 3)
    assert g.use_stability_score_for_iou is True


class _WithoutLowRes:
    """A predictor that offers only ``predict_torch`` (every candidate upscaled before filtering)."""

    def __init__(self, predictor):
        self._predictor = predictor

    def __getattr__(self, name):
        if name == "predict_low_res_torch":
            raise AttributeError(name)
        return getattr(self._predictor, name)


def test_filtering_at_low_resolution_keeps_the_same_masks(photo_factory):
    """Scoring and filtering before upscaling (only survivors upscaled) gives the records of upscaling all."""
    image = photo_factory(96, 128)
    predictor = SamPredictor(_disc_model())
    fast = SamAutomaticMaskGenerator(predictor, points_per_side=5, output_mode="uncompressed_rle").generate(image)
    slow = SamAutomaticMaskGenerator(_WithoutLowRes(predictor), points_per_side=5,
                                     output_mode="uncompressed_rle").generate(image)
    assert len(fast) == len(slow) >= 5
    for a, b in zip(fast, slow):
        assert a["segmentation"] == b["segmentation"] and a["bbox"] == b["bbox"]
        assert a["predicted_iou"] == b["predicted_iou"] and a["stability_score"] == b["stability_score"]


class _CountingPredictor(_WithoutLowRes):
    """Counts the prompt sets decoded."""

    def __init__(self, predictor):
        super().__init__(predictor)
        self.prompts = 0

    def predict_torch(self, **kwargs):
        rows = kwargs["point_coords"] if kwargs.get("point_coords") is not None else kwargs["boxes"]
        self.prompts += rows.shape[0]
        return self._predictor.predict_torch(**kwargs)


def test_skipping_covered_points_decodes_fewer_prompts_and_keeps_the_regions(photo_factory):
    from edgesam_core.inference.automatic_mask_generator import coarse_to_fine_order

    order = coarse_to_fine_order(16 * 16)
    assert sorted(order) == list(range(256)) and list(order[:4]) == [0, 8, 128, 136]  # every 8th first
    image = photo_factory(96, 128)
    full, fast = _CountingPredictor(SamPredictor(_disc_model())), _CountingPredictor(SamPredictor(_disc_model()))
    every = SamAutomaticMaskGenerator(full, points_per_side=16, points_per_batch=8).generate(image)
    quick = SamAutomaticMaskGenerator(fast, points_per_side=16, points_per_batch=8,
                                      skip_covered_points=True).generate(image)
    assert full.prompts == 256 and fast.prompts < 0.6 * full.prompts
    # The disc masks of the skipped points overlap kept ones: the union still covers most of the full run's.
    union_full = np.any([r["segmentation"] for r in every], axis=0)
    union_fast = np.any([r["segmentation"] for r in quick], axis=0)
    assert (union_full & union_fast).sum() >= 0.9 * union_full.sum()


def test_max_points_caps_the_decoder_runs(photo_factory):
    image = photo_factory(96, 128)
    counting = _CountingPredictor(SamPredictor(_disc_model()))
    records = SamAutomaticMaskGenerator(counting, points_per_side=16, points_per_batch=8, skip_covered_points=True,
                                        max_points=20).generate(image)
    assert counting.prompts <= 20 and records
    with pytest.raises(ValueError, match="max_points"):
        SamAutomaticMaskGenerator(counting, max_points=0)


def test_box_proposals_give_the_predictors_box_masks(debug_model, photo_factory):
    """Each kept record of the box strategy is ``predict(box=...)``'s single mask for its box, bit for bit."""
    image = photo_factory(90, 120)
    boxes = np.array([[10, 12, 70, 60], [40, 30, 118, 88], [0, 0, 120, 90]], np.float64)
    predictor = SamPredictor(debug_model)
    records = SamAutomaticMaskGenerator(predictor, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                        box_nms_thresh=1.0).generate(image, boxes=boxes)
    assert len(records) == 3
    predictor.set_image(image)
    for record in records:
        x, y, w, h = record["prompt_box"]
        box = np.array([x, y, x + w, y + h])
        assert any(np.array_equal(box, b) for b in boxes)
        masks, _, low_res = predictor.predict(box=box, num_multimask_outputs=1)
        assert np.array_equal(record["segmentation"], masks[0])
        assert record["point_coords"] == [[x + w / 2, y + h / 2]]
        from edgesam_core.inference.amg import stability_score_numpy

        assert record["predicted_iou"] == pytest.approx(float(stability_score_numpy(low_res)[0]), abs=1e-6)


def test_box_proposals_are_filtered_and_deduplicated(photo_factory):
    """Near-duplicate boxes give one mask (box NMS); the disc decoder draws its disc at each box's centre."""
    image = photo_factory(96, 128)
    counting = _CountingPredictor(SamPredictor(_disc_model()))
    boxes = [[20, 20, 60, 60], [21, 20, 61, 60], [80, 40, 120, 90]]
    records = SamAutomaticMaskGenerator(counting, points_per_batch=2, pred_iou_thresh=0.0,
                                        stability_score_thresh=0.0).generate(image, boxes=boxes)
    assert counting.prompts == 3  # one decoder prompt per box (through predict_torch: no low-res path)
    centres = sorted(tuple(r["point_coords"][0]) for r in records)
    assert len(records) == 2 and centres[1] == (100.0, 65.0) and centres[0] in ((40.0, 40.0), (41.0, 40.0))
    for record in records:
        px, py = record["point_coords"][0]
        assert record["segmentation"][int(py), int(px)]  # the disc around the box's centre
    assert SamAutomaticMaskGenerator(counting).generate(image, boxes=np.zeros((0, 4))) == []
    with pytest.raises(ValueError, match="crop_n_layers=0"):
        SamAutomaticMaskGenerator(counting, crop_n_layers=1).generate(image, boxes=boxes)
    with pytest.raises(ValueError, match="x1 > x0"):
        SamAutomaticMaskGenerator(counting).generate(image, boxes=[[50, 10, 40, 30]])
