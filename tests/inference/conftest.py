"""Shared fixtures for inference tests: tiny deterministic models and a natural-looking test photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image


def sample_photo() -> np.ndarray:
    """A real photograph shipped with matplotlib (600x512 RGB), or a procedural scene if it is absent."""
    try:
        import matplotlib
        from PIL import Image

        path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except (ImportError, OSError):
        return procedural_photo(600, 512)


def procedural_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth background, a few shaded discs and sensor noise: enough structure for a segmenter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([90 + 60 * y / h, 120 + 40 * x / w, 160 - 50 * y / h], axis=-1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.08, 0.2) * min(h, w)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        shade = 1 - 0.4 * np.clip(((y - cy) ** 2 + (x - cx) ** 2) / r**2, 0, 1)
        image[inside] = rng.uniform(20, 240, size=3) * shade[inside, None]
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def build_debug(variant: str = "edge_sam_dyt_debug", seed: int = 0):
    """A tiny model with deterministic random weights (no checkpoint)."""
    from edgesam_core.models import build_sam

    torch.manual_seed(seed)
    return build_sam(variant)


PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def _reference_pipeline(model, image, coords, labels, box, num_outputs):
    """Upstream EdgeSAM step by step, written plainly: PIL resize, normalise, pad, encode, decode, upscale."""
    h, w = image.shape[:2]
    size = model.img_size
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    x = (x - PIXEL_MEAN) / PIXEL_STD
    x = F.pad(x, (0, size - nw, 0, size - nh))[None]
    with torch.no_grad():
        embedding = model.image_encoder(x)
        pts = torch.tensor(coords * np.array([nw / w, nh / h]), dtype=torch.float)[None]
        bx = torch.tensor(box.reshape(2, 2) * np.array([nw / w, nh / h]), dtype=torch.float).reshape(1, 4)
        sparse, dense = model.prompt_encoder(points=(pts, torch.tensor(labels)[None]), boxes=bx, masks=None)
        low_res, iou = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          num_multimask_outputs=num_outputs)
        up = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)[..., :nh, :nw]
        up = F.interpolate(up, (h, w), mode="bilinear", align_corners=False)
    return up[0].numpy(), iou[0].numpy(), low_res[0].numpy()


@pytest.fixture(scope="session")
def reference_pipeline():
    """The plain re-implementation of upstream's predictor pipeline (see :func:`_reference_pipeline`)."""
    return _reference_pipeline


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """The sample photograph (see :func:`sample_photo`)."""
    return sample_photo()


@pytest.fixture(scope="module")
def debug_model():
    return build_debug("edge_sam_dyt_debug")


@pytest.fixture(scope="module")
def hq_model():
    return build_debug("edge_sam_dyt_hq_debug")


@pytest.fixture(scope="session")
def photo_factory():
    """The :func:`procedural_photo` function, for tests that need other sizes."""
    return procedural_photo


@pytest.fixture(scope="module")
def small_image() -> np.ndarray:
    return procedural_photo(90, 120)
