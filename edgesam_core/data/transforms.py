"""Resize images, coordinates and boxes so the longest image side equals the model input size.

This is the resize every EdgeSAM/SAM predictor applies before ``Sam.preprocess`` (normalise and pad).
The numpy path resizes a uint8 image with PIL's bilinear filter, which is exactly what upstream gets from
torchvision's ``resize`` on a PIL image, so no torchvision dependency is needed. The torch path uses
antialiased bilinear interpolation (what training uses); the two agree closely but not bit for bit.

Torch is imported inside the torch methods so that the numpy path (used by the ONNX runtime predictor)
never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgesam_core.errors import InputError

# SAM / EdgeSAM pixel statistics on the 0-255 RGB scale (spec §1.2); the one place data code reads them.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

if TYPE_CHECKING:
    import torch


class ResizeLongestSide:
    """Resize to a longest side of ``target_length`` pixels, keeping the aspect ratio.

    Args:
        target_length: the model input size (1024 for full-size models).
    """

    def __init__(self, target_length: int) -> None:
        if int(target_length) <= 0:
            raise ValueError(f"target_length must be a positive integer, got {target_length!r}")
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """Size ``(newh, neww)`` after scaling the longest side of ``(oldh, oldw)`` to ``long_side_length``.

        Each side is ``int(side * scale + 0.5)`` with ``scale = long_side_length / max(oldh, oldw)``, as
        upstream rounds it (so a side can round to ``long_side_length`` but never above it).
        """
        if oldh <= 0 or oldw <= 0:
            raise InputError(f"image size must be positive, got {oldw}x{oldh} (width x height)")
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = int(oldh * scale + 0.5), int(oldw * scale + 0.5)
        if newh == 0 or neww == 0:
            limit = -(-max(oldh, oldw) // (2 * long_side_length))  # ceil: the short side must round to >= 1
            raise InputError(f"image {oldw}x{oldh} (width x height) is too thin: its short side would be 0 px at "
                             f"{long_side_length} px; crop or pad it so the short side is at least {limit} px")
        return newh, neww

    def _new_size(self, original_size: tuple[int, ...]) -> tuple[int, int]:
        return self.get_preprocess_shape(int(original_size[0]), int(original_size[1]), self.target_length)

    # -- numpy ---------------------------------------------------------------------------------------------

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``HxWxC`` uint8 image (C = 1, 3 or 4) with PIL's bilinear filter.

        Returns:
            ``newh x neww x C`` uint8 array.
        """
        from PIL import Image

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"apply_image expects an HxWxC uint8 array, got {image.dtype} {image.shape}")
        newh, neww = self._new_size(image.shape[:2])
        array = np.ascontiguousarray(image)
        pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        resized = np.array(pil.resize((neww, newh), Image.Resampling.BILINEAR))
        return resized.reshape(newh, neww, image.shape[2])

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scale ``(..., 2)`` xy coordinates given in an image of ``original_size = (H, W)``.

        Returns:
            A new float64 array; the input is not modified.
        """
        old_h, old_w = original_size[0], original_size[1]
        new_h, new_w = self._new_size(original_size)
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] = out[..., 0] * (new_w / old_w)
        out[..., 1] = out[..., 1] * (new_h / old_h)
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scale ``Bx4`` (or ``4``) xyxy boxes; returns ``Bx4`` float64."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """Resize ``NxHxW`` masks with nearest-neighbour sampling, exactly as :meth:`apply_masks_torch`.

        Upstream resizes ground-truth masks with ``F.interpolate(mode="nearest")``, which samples source
        index ``floor(i * in / out)`` (float32 scale), not the pixel centre as PIL's NEAREST does; the two
        disagree on about half the pixels of a fine mask, so this numpy twin follows torch.
        """
        if masks.ndim != 3:
            raise ValueError(f"apply_masks expects an NxHxW array, got shape {masks.shape}")
        newh, neww = self._new_size(masks.shape[1:])
        rows = _nearest_source_index(masks.shape[1], newh)
        cols = _nearest_source_index(masks.shape[2], neww)
        return np.ascontiguousarray(masks[:, rows[:, None], cols[None, :]])

    # -- torch ---------------------------------------------------------------------------------------------

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a ``BxCxHxW`` float batch with antialiased bilinear interpolation (align_corners=False)."""
        from torch.nn import functional as F

        if image.ndim != 4:
            raise ValueError(f"apply_image_torch expects a BxCxHxW tensor, got shape {tuple(image.shape)}")
        size = self._new_size(tuple(image.shape[2:]))
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Scale ``(..., 2)`` xy coordinates (torch); returns a new float32 tensor."""
        import torch

        old_h, old_w = original_size[0], original_size[1]
        new_h, new_w = self._new_size(original_size)
        out = coords.detach().clone().to(torch.float)
        out[..., 0] = out[..., 0] * (new_w / old_w)
        out[..., 1] = out[..., 1] * (new_h / old_h)
        return out

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Scale ``Bx4`` xyxy boxes (torch); returns ``Bx4`` float32."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_masks_torch(self, masks: torch.Tensor) -> torch.Tensor:
        """Resize ``NxHxW`` masks with nearest-neighbour interpolation (torch)."""
        from torch.nn import functional as F

        if masks.ndim != 3:
            raise ValueError(f"apply_masks_torch expects an NxHxW tensor, got shape {tuple(masks.shape)}")
        size = self._new_size(tuple(masks.shape[1:]))
        return F.interpolate(masks[:, None].float(), size, mode="nearest").squeeze(1).to(masks.dtype)


def _nearest_source_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output pixel for torch's ``nearest`` mode (``floor(i * scale)`` in float32)."""
    if out_size == in_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)
