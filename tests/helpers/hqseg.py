"""A tiny HQSeg-44K-shaped tree for tests: the seven training-set folders with real JPEGs and grey-level PNG
masks (a soft-edged ellipse, 0-255), plus a stray image without a mask and a stray mask without an image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgesam_core.data.hqseg import HQSEG_TRAIN_SETS


def ellipse_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A large ellipse (about a third of the image) with a 1-pixel grey rim, as HxW uint8 0-255."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    ry, rx = h * rng.uniform(0.25, 0.35), w * rng.uniform(0.25, 0.35)
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return np.where(r <= 0.9, 255, np.where(r <= 1.0, 100, 0)).astype(np.uint8)


def write_hqseg(root: Path, per_set: int = 1, seed: int = 0, sets: tuple[str, ...] | None = None) -> Path:
    """Write ``per_set`` image/mask pairs into each training-set folder under ``root`` and return ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, subset in enumerate(HQSEG_TRAIN_SETS):
        if sets is not None and subset.name not in sets:
            continue
        image_dir, mask_dir = root / subset.image_dir, root / subset.mask_dir
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for j in range(per_set):
            h, w = (48, 64) if (k + j) % 2 == 0 else (64, 40)
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
            (image_dir / f"img_{j}.jpg").write_bytes(buf.getvalue())
            Image.fromarray(ellipse_mask(h, w, rng)).save(mask_dir / f"img_{j}.png")
    return root


def add_strays(root: Path) -> tuple[Path, Path]:
    """An image without mask (DUTS-TR) and a mask without image (DIS5K-TR); returns both paths."""
    from PIL import Image

    image = root / "cascade_psp" / "DUTS-TR" / "zz_lonely.jpg"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    mask = root / "DIS5K" / "DIS-TR" / "gt" / "orphan.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
    return image, mask
