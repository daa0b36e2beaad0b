"""Turn masks into what the page needs: small PNGs (as data URLs), COCO RLE, bbox and area.

Speed matters here because it is part of every click's round trip: a bool mask is saved as a 1-bit PNG
with the fastest zlib level, which is a few kilobytes and a few milliseconds even for 12-megapixel
images, and is decoded by the browser with no extra work.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgesam_core.inference.amg import encode_binary_mask

#: Overlay colours for "everything" mode (RGB), cycled; chosen to stay distinct next to each other.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an ``HxW`` bool mask (1-bit PNG), ``HxW`` uint8 (grey) or ``HxWx4`` uint8 (RGBA) array as PNG."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype == bool:
        # PIL maps a bool array to mode "1"; the PNG then stores 1 bit per pixel.
        picture = Image.fromarray(np.ascontiguousarray(array))
    elif array.dtype == np.uint8 and array.ndim in (2, 3):
        picture = Image.fromarray(np.ascontiguousarray(array))
    else:
        raise ValueError(f"png_bytes expects a bool or uint8 image, got {array.dtype} with shape {array.shape}")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes (what an ``<img>`` or ``Image()`` loads directly)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def preview_data_url(image: np.ndarray, quality: int = 90) -> str:
    """JPEG data URL of an ``HxWx3`` uint8 image: what the page shows, in exactly the frame the model saw
    (EXIF rotation applied, any input format), so clicks map to the same pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_from_data_url(url: str) -> bytes:
    """Inverse of :func:`data_url` (used by tests and the benchmark)."""
    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        raise ValueError("not a PNG data URL")
    return base64.b64decode(url[len(prefix):])


def mask_bbox_xywh(mask: np.ndarray) -> list[int]:
    """Tight ``[x, y, w, h]`` box of an ``HxW`` bool mask in pixels; ``[0, 0, 0, 0]`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [0, 0, 0, 0]
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def mask_record(mask: np.ndarray, score: float, predicted_iou: float) -> dict[str, Any]:
    """Everything the page shows and downloads for one mask.

    Args:
        mask: ``HxW`` bool mask in the original image frame.
        score: stability score of the mask logits (NaN, for an empty mask, becomes 0).
        predicted_iou: the IoU head's prediction.

    Returns:
        ``{"png": data URL, "score", "predicted_iou", "area", "bbox" (XYWH), "rle" (COCO compressed)}``.
    """
    mask = np.asarray(mask, dtype=bool)
    return {
        "png": data_url(png_bytes(mask)),
        "score": _finite(score),
        "predicted_iou": _finite(predicted_iou),
        "area": int(np.count_nonzero(mask)),
        "bbox": mask_bbox_xywh(mask),
        "rle": encode_binary_mask(mask),
    }


def colour_overlay(masks: Sequence[np.ndarray], alpha: int = 140) -> np.ndarray:
    """Paint masks into one ``HxWx4`` RGBA image, one palette colour each, later masks on top.

    Args:
        masks: ``HxW`` bool masks of the same size (at least one).
        alpha: opacity of painted pixels (0-255); unpainted pixels are fully transparent.
    """
    if not masks:
        raise ValueError("colour_overlay needs at least one mask")
    h, w = masks[0].shape
    labels = np.zeros((h, w), dtype=np.uint16)
    for index, mask in enumerate(masks, start=1):
        labels[np.asarray(mask, dtype=bool)] = index
    table = np.zeros((len(masks) + 1, 4), dtype=np.uint8)
    for index in range(1, len(masks) + 1):
        table[index, :3] = PALETTE[(index - 1) % len(PALETTE)]
        table[index, 3] = alpha
    return table[labels]


def _finite(value: float) -> float:
    value = float(value)
    return value if np.isfinite(value) else 0.0
