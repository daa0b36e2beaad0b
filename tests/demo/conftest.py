"""Fixtures for the demo tests: tiny checkpoints whose masks are neither empty nor full, a test image,
and a running demo server on a free loopback port."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.perturb import perturb_prompt_path

#: Std of the seeded noise added to the prompt encoder and decoder. Freshly initialised decoders give
#: near-constant logits (every mask empty or full), which would make mask comparisons trivially true.
SPREAD = 0.2
#: A click used by several tests, in the pixels of :func:`scene`.
CLICK = (70.0, 40.0)


def make_checkpoint(variant: str, path: Path, seed: int = 0, spread: float = SPREAD) -> Path:
    """Save a ``variant`` state dict with seeded random weights (decoder perturbed by ``spread``)."""
    from edgesam_core.models import build_sam

    torch.manual_seed(seed)
    model = perturb_prompt_path(build_sam(variant), seed + 1, spread)
    torch.save(model.state_dict(), path)
    return path


def scene(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A gradient with a few flat discs and a little noise (``HxWx3`` uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([80 + 90 * y / height, 110 + 60 * x / width, 170 - 60 * y / height], axis=-1)
    for _ in range(3):
        cy, cx, r = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width, rng.uniform(0.1, 0.25) * height
        image[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.uniform(20, 240, size=3)
    image += rng.normal(0, 3, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def png_of(image: np.ndarray) -> bytes:
    """PNG bytes of an ``HxWx3`` uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
            method: str | None = None) -> tuple[int, dict[str, Any]]:
    """HTTP request -> (status, decoded JSON), for error statuses too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_json(url: str, payload: Any) -> tuple[int, dict[str, Any]]:
    """POST ``payload`` as JSON."""
    return request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


@pytest.fixture(scope="package")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``edge_sam_dyt_debug`` and ``edge_sam_dyt_hq_debug`` checkpoints (seed 0, decoder spread 0.2)."""
    folder = tmp_path_factory.mktemp("demo_ckpt")
    return {v: make_checkpoint(v, folder / f"{v}.pth") for v in ("edge_sam_dyt_debug", "edge_sam_dyt_hq_debug")}


@pytest.fixture()
def session(checkpoints: dict[str, Path]):
    """A fresh DemoSession on the non-HQ debug checkpoint."""
    from edgesam_core.demo.session import DemoSession

    return DemoSession.from_checkpoint(checkpoints["edge_sam_dyt_debug"])


@pytest.fixture()
def server(session) -> Iterator[Any]:
    """The demo served on a free loopback port; shut down after the test."""
    from edgesam_core.demo.server import serve

    with serve(session, port=0) as running:
        yield running
