"""Prompted mIoU evaluation: metrics, prompts, dataset readers, the evaluation loop and its reports.

Importing this package loads numpy only; torch is needed only by the predictor you pass in.
"""

from __future__ import annotations

from .evaluate import EvalReport, MaskRecord, evaluate
from .metrics import aggregate_miou, mask_iou, refinement_click, size_bucket
from .samples import COCOEvalSet, EvalObject, EvalSample, SA1BEvalSet, open_eval_dataset

__all__ = [
    "COCOEvalSet",
    "EvalObject",
    "EvalReport",
    "EvalSample",
    "MaskRecord",
    "SA1BEvalSet",
    "aggregate_miou",
    "evaluate",
    "mask_iou",
    "open_eval_dataset",
    "refinement_click",
    "size_bucket",
]
