"""The predictor interface shared by every backend (PyTorch, ONNX, ...) and its result type.

``evaluate`` and ``segment`` only rely on :class:`Predictor`, so the same code scores a ``.pth``
checkpoint and an exported artifact.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


class Prediction(tuple):
    """The result of ``predict``: unpacks as ``masks, scores, low_res_logits``.

    When ``predict(..., return_sam_masks=True)`` is used on an HQ model the tuple has a fourth element,
    ``sam_masks``. Every part is also available by name; ``sam_masks``/``low_res_sam_logits`` are None for
    non-HQ models or when they were not requested.

    Attributes:
        masks: ``CxHxW`` bool masks (float32 logits with ``return_logits=True``) in the original image frame.
        scores: ``C`` float32 quality scores (predicted IoU, or stability scores when requested).
        low_res_logits: ``Cx256x256`` float32 logits (``4*grid`` square), usable as the next ``mask_input``.
        sam_masks: HQ models only: ``1xHxW`` mask of SAM's token 0 next to the HQ mask.
        low_res_sam_logits: HQ models only: the low-resolution logits of ``sam_masks``.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    sam_masks: np.ndarray | None
    low_res_sam_logits: np.ndarray | None

    def __new__(  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        cls,
        masks: np.ndarray,
        scores: np.ndarray,
        low_res_logits: np.ndarray,
        sam_masks: np.ndarray | None = None,
        low_res_sam_logits: np.ndarray | None = None,
        include_sam_masks: bool = False,
    ) -> Prediction:
        items: tuple[Any, ...] = (masks, scores, low_res_logits)
        if include_sam_masks:
            items += (sam_masks,)
        self = super().__new__(cls, items)
        self.masks = masks
        self.scores = scores
        self.low_res_logits = low_res_logits
        self.sam_masks = sam_masks
        self.low_res_sam_logits = low_res_sam_logits
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self.masks, self.scores, self.low_res_logits, self.sam_masks, self.low_res_sam_logits,
                len(self) == 4)


@runtime_checkable
class Predictor(Protocol):
    """What every predictor backend provides (SAM's ``SamPredictor`` API).

    Coordinates are pixels of the original image (x right, y down); boxes are ``x0, y0, x1, y1``.
    """

    #: True when the model predicts one HQ mask per prompt (``edge_sam_dyt_hq``).
    is_hq: bool
    #: ``(H, W)`` of the image given to ``set_image``, or None.
    original_size: tuple[int, int] | None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an ``HxWx3`` uint8 image; later ``predict`` calls reuse the embedding."""

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        num_multimask_outputs: int | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        use_stability_score: bool = False,
        return_sam_masks: bool = False,
        best_only: bool = False,
    ) -> Prediction:
        """Predict masks for one set of prompts on the current image.

        ``best_only=True`` keeps only the candidate whose low-resolution logits have the highest stability
        score (an empty mask's NaN never wins) and upscales only that one: EdgeSAM's rule for a click.
        """

    def reset_image(self) -> None:
        """Forget the current image."""
