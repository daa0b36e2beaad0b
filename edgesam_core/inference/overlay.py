"""Draw masks and prompts over an image for a quick visual check (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Distinct, saturated colours; masks cycle through them.
PALETTE = (
    (30, 144, 255), (255, 165, 0), (148, 0, 211), (0, 206, 209), (255, 20, 147),
    (154, 205, 50), (255, 215, 0), (220, 20, 60), (72, 61, 139), (0, 128, 128),
)
POSITIVE = (0, 200, 0)
NEGATIVE = (230, 0, 0)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, masks: Sequence[np.ndarray], scores: Sequence[float], prompts: Any,
                   alpha: float = 0.5) -> np.ndarray:
    """Blend each mask in its own colour over ``image`` and draw points, boxes and scores.

    Args:
        image: ``HxWx3`` uint8 RGB.
        masks: ``HxW`` bool masks.
        scores: one score per mask, written at the mask's top-left corner.
        prompts: object with ``points``, ``labels`` and ``boxes`` (a ``SegmentPrompts``).
        alpha: mask opacity.

    Returns:
        ``HxWx3`` uint8 RGB overlay.
    """
    from PIL import Image, ImageDraw

    canvas = image.astype(np.float32)
    for i, mask in enumerate(masks):
        colour = np.asarray(PALETTE[i % len(PALETTE)], dtype=np.float32)
        canvas[mask] = canvas[mask] * (1 - alpha) + colour * alpha
    pil = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    h, w = image.shape[:2]
    unit = max(2, round(min(h, w) / 150))
    font = _font(max(10, 6 * unit))
    for i, box in enumerate(getattr(prompts, "boxes", ())):
        draw.rectangle(list(box), outline=PALETTE[i % len(PALETTE)], width=unit)
    for (x, y), label in zip(getattr(prompts, "points", ()), getattr(prompts, "labels", ())):
        r = 2 * unit
        draw.ellipse([x - r, y - r, x + r, y + r], fill=POSITIVE if label == 1 else NEGATIVE,
                     outline=(255, 255, 255), width=max(1, unit // 2))
    for i, (mask, score) in enumerate(zip(masks, scores)):
        ys, xs = np.nonzero(mask)
        if xs.size == 0:
            continue
        text = f"{i}: {score:.2f}"
        x0, y0 = int(xs.min()), int(ys.min())
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        draw.text((x0, y0), text, fill=PALETTE[i % len(PALETTE)], font=font)
    return np.asarray(pil)
