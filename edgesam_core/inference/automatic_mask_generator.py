"""Segment everything: prompt a grid of points (optionally on crops) or a detector's boxes, filter, de-duplicate.

The algorithm is SAM's ``SamAutomaticMaskGenerator`` with EdgeSAM's settings. Upstream EdgeSAM-DyT crashes
here (it unpacks three values from its five-value ``predict_torch``); this version calls the predictor by
keyword and works for HQ models too (one mask per point).

EdgeSAM's generator ranks and filters masks by **stability scores** in place of predicted IoUs, because
its ``predict_torch`` defaults to ``use_stability_score=True``: the 0.88 ``pred_iou_thresh`` is therefore
applied to stability scores of the low-res logits. ``use_stability_score_for_iou=True`` (the default)
keeps that behaviour; ``False`` gives SAM's behaviour (the IoU head's predictions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgesam_core.inference.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    nms,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from edgesam_core.inference.predictor import SamPredictor, resolve_num_outputs

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    Args:
        model: a ``Sam`` model, or a predictor with ``set_image`` and ``predict_torch``: the PyTorch
            :class:`SamPredictor` or an exported backend's (ONNX, TFLite, TensorRT).
        points_per_side: grid points per image side (``points_per_side**2`` prompts); None requires
            ``point_grids``.
        points_per_batch: prompts decoded per decoder call.
        pred_iou_thresh: keep masks whose score (see ``use_stability_score_for_iou``) is above this.
        stability_score_thresh: keep masks whose full-resolution stability score is at least this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which duplicate masks within a crop are removed.
        crop_n_layers: extra layers of crops (layer i has ``(2**i)**2`` crops).
        crop_nms_thresh: box IoU for removing duplicates between crops.
        crop_overlap_ratio: overlap of neighbouring crops in layer 1, as a fraction of the short side.
        crop_n_points_downscale_factor: points per side shrink by this factor per layer.
        point_grids: explicit ``Nx2`` grids in [0, 1], one per layer (exclusive with points_per_side).
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this (needs scipy).
        output_mode: ``"binary_mask"``, ``"uncompressed_rle"`` or ``"coco_rle"``.
        num_multimask_outputs: masks per point (1, 3 or 4; upstream uses 3). Ignored by HQ models.
        use_stability_score_for_iou: use stability scores of the low-res logits as the "predicted IoU"
            (EdgeSAM's behaviour, default) instead of the IoU head's output (SAM's behaviour).
        skip_covered_points: visit the grid coarse to fine and skip points that already lie inside a mask
            kept from an earlier batch (fewer decoder runs; a region's second mask from a point inside it is
            lost, e.g. a part inside a whole). Off by default (SAM's behaviour).
        max_points: decode at most this many grid points per crop (with ``skip_covered_points``, the
            coarse-to-fine order spends them over the whole image first). None: all.
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        num_multimask_outputs: int = 3,
        use_stability_score_for_iou: bool = True,
        skip_covered_points: bool = False,
        max_points: int | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("Give exactly one of points_per_side or point_grids")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            if crop_n_points_downscale_factor < 1:
                raise ValueError("crop_n_points_downscale_factor must be >= 1")
            self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers,
                                                           crop_n_points_downscale_factor)
        else:
            assert point_grids is not None  # checked above
            if len(point_grids) != crop_n_layers + 1:
                raise ValueError(f"point_grids needs {crop_n_layers + 1} grids (one per crop layer), "
                                 f"got {len(point_grids)}")
            self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        resolve_num_outputs(num_multimask_outputs, None)  # validates the count

        is_predictor = hasattr(model, "predict_torch") and hasattr(model, "set_image")
        self.predictor = model if is_predictor else SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.num_multimask_outputs = num_multimask_outputs
        self.use_stability_score_for_iou = use_stability_score_for_iou
        self.skip_covered_points = skip_covered_points
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.max_points = max_points

    @torch.no_grad()
    def generate(self, image: np.ndarray, boxes: Any = None) -> list[dict[str, Any]]:
        """Generate masks for an ``HxWx3`` uint8 RGB image.

        Args:
            image: the image.
            boxes: box proposals (``Nx4`` xyxy pixels, e.g. a detector's), or a callable giving them from the
                predictor once the image is set (a trained proposal head reads its embedding): each box is one
                prompt with one mask (SAM's single-mask output for boxes) in place of the point grid; the same
                filters and de-duplication follow. Needs ``crop_n_layers=0``.

        Returns:
            One record per mask, sorted by nothing in particular (NMS order): ``segmentation`` (``HxW`` bool
            array or RLE dict, per ``output_mode``), ``area`` (int), ``bbox`` (XYWH), ``predicted_iou``,
            ``point_coords`` (``[[x, y]]``: the grid point, or the centre of the prompting box),
            ``stability_score``, ``crop_box`` (XYWH), and with ``boxes`` ``prompt_box`` (the box, XYWH).
        """
        if boxes is not None and self.crop_n_layers:
            raise ValueError("box proposals prompt the whole image: use crop_n_layers=0")
        data = self._generate_masks(image, boxes if boxes is None or callable(boxes) else _check_boxes(boxes))
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(data, self.min_mask_region_area,
                                                  max(self.box_nms_thresh, self.crop_nms_thresh))
        if self.output_mode == "coco_rle":
            segmentations: list[Any] = [coco_encode_rle(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_mask(rle) for rle in data["rles"]]
        else:
            segmentations = list(data["rles"])
        records = []
        for i, segmentation in enumerate(segmentations):
            records.append({
                "segmentation": segmentation,
                "area": area_from_rle(data["rles"][i]),
                "bbox": _xywh(data["boxes"][i]),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [np.asarray(data["points"][i], dtype=np.float64).tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": _xywh(data["crop_boxes"][i]),
                **({"prompt_box": _xywh(data["prompt_boxes"][i])} if "prompt_boxes" in data else {}),
            })
        return records

    def _generate_masks(self, image: np.ndarray, boxes: Any = None) -> MaskData:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"generate expects an HxWx3 uint8 array, got {getattr(image, 'shape', None)}")
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        for crop_box, layer in zip(crop_boxes, layer_idxs):
            data.cat(self._process_crop(image, crop_box, layer, orig_size, boxes))
        if len(crop_boxes) > 1 and len(data["rles"]) > 0:
            # Between crops prefer masks from smaller crops.
            scores = 1.0 / box_area(data["crop_boxes"].float())
            data.filter(nms(data["boxes"].float(), scores.to(data["boxes"].device), self.crop_nms_thresh))
        data.to_numpy()
        return data

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int,
                      orig_size: tuple[int, int], boxes: Any = None) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        self.predictor.set_image(crop)
        if boxes is not None:  # box proposals (whole image only): one prompt per box
            if callable(boxes):
                boxes = _check_boxes(boxes(self.predictor))
            data = MaskData()
            for (batch,) in batch_iterator(self.points_per_batch, boxes):
                data.cat(self._process_batch(None, crop_size, crop_box, orig_size, boxes=batch))
            return self._finish_crop(data, crop_box)
        points_for_crop = self.point_grids[layer] * np.array(crop_size, dtype=np.float64)[None, ::-1]
        covered = None
        if self.skip_covered_points:
            points_for_crop = points_for_crop[coarse_to_fine_order(len(points_for_crop))]
            covered = torch.zeros(crop_size, dtype=torch.bool)
        data = MaskData()
        budget = self.max_points if self.max_points is not None else len(points_for_crop)
        for (points,) in batch_iterator(self.points_per_batch, points_for_crop):
            if covered is not None:
                cols = np.clip(points[:, 0].astype(int), 0, crop_size[1] - 1)
                rows = np.clip(points[:, 1].astype(int), 0, crop_size[0] - 1)
                points = points[~covered[rows, cols].numpy()]
            points = points[:budget]
            if not len(points):
                if budget == 0:
                    break
                continue
            budget -= len(points)
            data.cat(self._process_batch(points, crop_size, crop_box, orig_size, covered))
        return self._finish_crop(data, crop_box)

    def _finish_crop(self, data: MaskData, crop_box: list[int]) -> MaskData:
        """De-duplicate one crop's masks and move them into the image frame."""
        self.predictor.reset_image()
        if "rles" not in data:
            return _empty_data(crop_box)
        if len(data["rles"]) > 0:
            data.filter(nms(data["boxes"].float(), data["iou_preds"], self.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        if "prompt_boxes" in data:
            data["prompt_boxes"] = uncrop_boxes_xyxy(data["prompt_boxes"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]), dtype=torch.long).reshape(-1, 4)
        return data

    def _process_batch(self, points: np.ndarray | None, crop_size: tuple[int, int], crop_box: list[int],
                       orig_size: tuple[int, int], covered: torch.Tensor | None = None,
                       boxes: np.ndarray | None = None) -> MaskData:
        """Decode one batch of grid points (or, with ``boxes``, of box prompts: one mask each), filter, encode."""
        orig_h, orig_w = orig_size
        device = getattr(self.predictor, "device", "cpu")  # exported backends take CPU tensors
        transform = self.predictor.transform
        prompt: dict[str, Any]
        if boxes is None:
            assert points is not None
            in_points = torch.as_tensor(transform.apply_coords(points, crop_size), dtype=torch.float, device=device)
            prompt = {"point_coords": in_points[:, None, :],
                      "point_labels": torch.ones(len(in_points), 1, dtype=torch.int, device=device)}
            outputs = self.num_multimask_outputs
        else:
            points = (boxes[:, :2] + boxes[:, 2:]) / 2
            prompt = {"point_coords": None, "point_labels": None,
                      "boxes": torch.as_tensor(transform.apply_boxes(boxes, crop_size), dtype=torch.float,
                                               device=device)}
            outputs = 1
        low_res_first = hasattr(self.predictor, "predict_low_res_torch")
        if low_res_first:
            # Score and filter at low resolution; only the survivors are upscaled to the image (the same masks).
            iou_preds, masks = self.predictor.predict_low_res_torch(
                num_multimask_outputs=outputs, use_stability_score=self.use_stability_score_for_iou, **prompt)
        else:
            masks, iou_preds, _ = self.predictor.predict_torch(
                num_multimask_outputs=outputs, return_logits=True,
                use_stability_score=self.use_stability_score_for_iou, **prompt)
        per_point = masks.shape[1]
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(np.repeat(points, per_point, axis=0), dtype=torch.float),
        )
        if boxes is not None:
            data["prompt_boxes"] = torch.as_tensor(np.repeat(boxes, per_point, axis=0), dtype=torch.float)
        del masks
        if self.pred_iou_thresh > 0.0:
            # NaN scores (all-background logits) compare False and are dropped, as upstream.
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        if low_res_first:
            data["masks"] = self.predictor.upscale_masks(data["masks"][:, None])[:, 0]
        threshold = self.predictor.mask_threshold
        data["stability_score"] = calculate_stability_score(data["masks"], threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > threshold
        if covered is not None and len(data["masks"]):
            covered |= data["masks"].any(dim=0).cpu()
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["rles"] = mask_to_rle_pytorch(uncrop_masks(data["masks"], crop_box, orig_h, orig_w))
        del data["masks"]
        return data

    @staticmethod
    def postprocess_small_regions(data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes and drop small islands in every mask, then re-run box NMS.

        Masks that needed no change are preferred by the NMS (score 1 vs 0), as in SAM. Edits ``data``.
        """
        if len(data["rles"]) == 0:
            return data
        new_masks, scores = [], []
        for rle in data["rles"]:
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(torch.as_tensor(mask)[None])
            scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
        masks = torch.cat(new_masks, dim=0)
        boxes = batched_mask_to_box(masks)
        keep = nms(boxes.float(), torch.as_tensor(scores), nms_thresh)
        for i in keep.tolist():
            if scores[i] == 0.0:
                data["rles"][i] = mask_to_rle_pytorch(masks[i][None])[0]
                data["boxes"][i] = boxes[i].numpy() if isinstance(data["boxes"], np.ndarray) else boxes[i]
        data.filter(keep)
        return data


def _check_boxes(boxes: Any) -> np.ndarray:
    """Box proposals as an ``Nx4`` float64 array; raises ValueError for malformed boxes."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    if not np.isfinite(array).all() or (array[:, 2:] <= array[:, :2]).any():
        raise ValueError("box proposals must be finite x0, y0, x1, y1 with x1 > x0 and y1 > y0")
    return array


def coarse_to_fine_order(count: int) -> np.ndarray:
    """Visiting order of a square grid of ``count`` points (row-major): every 8th row/column first, then
    every 4th, 2nd, and the rest, so early batches spread over the image."""
    side = int(round(count ** 0.5))
    if side * side != count:
        return np.arange(count)
    rows, cols = np.divmod(np.arange(count), side)
    level = np.full(count, 3)
    for rank, step in enumerate((8, 4, 2)):
        level = np.where((level == 3) & (rows % step == 0) & (cols % step == 0), rank, level)
    return np.argsort(level, kind="stable")


def _xywh(box: Any) -> list[float]:
    return [float(v) for v in box_xyxy_to_xywh(torch.as_tensor(np.asarray(box))).tolist()]


def _empty_data(crop_box: list[int]) -> MaskData:
    return MaskData(rles=[], boxes=torch.zeros(0, 4, dtype=torch.long), points=torch.zeros(0, 2),
                    iou_preds=torch.zeros(0), stability_score=torch.zeros(0),
                    crop_boxes=torch.zeros(0, 4, dtype=torch.long))
