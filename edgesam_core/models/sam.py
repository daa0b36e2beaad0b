"""The ``Sam`` wrapper: image encoder + prompt encoder + mask decoder, with SAM's pre/post-processing."""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .mask_resize import mask_logits_above, resize_mask_logits

# An image embedding ``(B, 256, 64, 64)``, or for HQ models ``(embedding, [early features])``.
ImageFeatures = Union[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment-Anything style model.

    Args:
        image_encoder: RepViT or ViT encoder (has ``img_size``).
        prompt_encoder: ``PromptEncoder``.
        mask_decoder: ``MaskDecoder`` or an HQ decoder.
        variant: registry name the model was built from.
        is_hq: True when the encoder returns early features and the decoder returns ``(hq, sam, iou)``.
        pixel_mean / pixel_std: RGB normalisation on the 0-255 scale.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        variant: str = "",
        is_hq: bool = False,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.variant = variant
        self.is_hq = is_hq
        # Non-persistent: the published checkpoints do not contain them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024, or 128 for debug variants)."""
        return int(self.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, 3, H, W)`` or ``(3, H, W)`` 0-255 RGB, then zero-pad bottom/right to ``img_size``."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def encode_image(self, x: torch.Tensor) -> ImageFeatures:
        """Run the image encoder on preprocessed images ``(B, 3, img_size, img_size)``.

        Returns:
            The embedding ``(B, 256, 64, 64)``; for HQ models ``(embedding, [early features])``.
        """
        out = self.image_encoder(x)
        if isinstance(out, tuple):
            embedding, feats = out
            return embedding, list(feats)
        return out

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: Sequence[int],
        original_size: Sequence[int],
    ) -> torch.Tensor:
        """Upscale low-res logits to ``img_size``, crop the padding, resize to the original image.

        Args:
            masks: ``(B, C, h, w)`` logits from the decoder.
            input_size: ``(H, W)`` of the resized image before padding.
            original_size: ``(H, W)`` of the original image.

        Returns:
            ``(B, C, H_orig, W_orig)`` logits (threshold at ``mask_threshold`` for a binary mask).
        """
        return resize_mask_logits(masks, self.img_size, input_size, original_size)

    def postprocess_binary_masks(self, masks: torch.Tensor, input_size: Sequence[int],
                                 original_size: Sequence[int]) -> torch.Tensor:
        """``postprocess_masks(...) > mask_threshold``: the same bool pixels; at SAM's threshold 0 a photo much
        larger than the model frame is resized only where a mask's boundary crosses it (see :mod:`.mask_resize`)."""
        return mask_logits_above(masks, self.img_size, input_size, original_size, self.mask_threshold)

    def forward(self, batched_input: list[dict[str, Any]], num_multimask_outputs: int = 1,
                use_stability_score: bool = False, training_mode: bool = False) -> list[dict[str, Any]]:
        """SAM-style end-to-end prediction (upstream EdgeSAM's signature).

        Args:
            batched_input: one dict per image with ``image`` (3xHxW, resized, 0-255), ``original_size`` (H, W)
                and optionally ``point_coords`` (BxNx2), ``point_labels`` (BxN), ``boxes`` (Bx4),
                ``mask_inputs`` (Bx1x256x256), all in the resized frame.
            num_multimask_outputs: 1, 3 or 4 masks per prompt set.
            use_stability_score: report stability scores of the low-res logits as ``iou_predictions``
                (upstream documents this flag but ignores it).
            training_mode: run the prompt encoder and decoder with autograd (the image encoder never is).

        Returns:
            One dict per image with ``masks`` (bool, original size), ``iou_predictions``, ``low_res_logits``
            and, for HQ models, ``low_res_logits_sam``.
        """
        with torch.no_grad():
            images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
            features = self.encode_image(images)
        embeddings, interm = features if isinstance(features, tuple) else (features, None)
        with torch.set_grad_enabled(training_mode):
            return [self._decode_record(rec, i, embeddings, interm, num_multimask_outputs, use_stability_score)
                    for i, rec in enumerate(batched_input)]

    def _decode_record(self, rec: dict[str, Any], i: int, embeddings: torch.Tensor, interm: Any,
                       num_multimask_outputs: int, use_stability_score: bool) -> dict[str, Any]:
        """Prompt encoder + decoder + post-processing for record ``i`` of :meth:`forward`."""
        points = (rec["point_coords"], rec["point_labels"]) if "point_coords" in rec else None
        sparse, dense = self.prompt_encoder(points=points, boxes=rec.get("boxes"), masks=rec.get("mask_inputs"))
        out = self.mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            num_multimask_outputs=num_multimask_outputs,
            interm_embeddings=None if interm is None else [f[i : i + 1] for f in interm],
        )
        low_res, iou = (out[0], out[2]) if self.is_hq else out
        if use_stability_score:
            iou = stability_score(low_res, self.mask_threshold, 1.0)
        masks = self.postprocess_masks(low_res, rec["image"].shape[-2:], rec["original_size"])
        record = {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
        if self.is_hq:
            record["low_res_logits_sam"] = out[1]
        return record


def stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU between the masks binarised at ``threshold + offset`` and at ``threshold - offset``.

    Args:
        masks: ``...xHxW`` mask logits.
        mask_threshold: the model's binarisation threshold (0.0).
        threshold_offset: how far to move the threshold each way (1.0 in EdgeSAM and SAM).

    Returns:
        ``...`` float32 scores in [0, 1]; the high-threshold mask is always inside the low-threshold one,
        so the IoU is a ratio of pixel counts. An all-background mask gives NaN (0/0), as upstream.
    """
    high = (masks > (mask_threshold + threshold_offset)).sum(dim=(-1, -2), dtype=torch.int32)
    low = (masks > (mask_threshold - threshold_offset)).sum(dim=(-1, -2), dtype=torch.int32)
    return high.float() / low.float()
