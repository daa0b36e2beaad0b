"""Builders for SA-1B- and COCO-format test data: real JPEGs, real RLE masks, consistent boxes/points."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest


def make_masks(h: int, w: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` distinct rectangles and ellipses as HxW uint8 masks (every mask has > 20 pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    masks = []
    for i in range(count):
        bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        if i % 2:
            cx, cy = x0 + bw / 2, y0 + bh / 2
            mask = ((xx - cx) / (bw / 2)) ** 2 + ((yy - cy) / (bh / 2)) ** 2 <= 1.0
        else:
            mask = (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)
        masks.append(mask.astype(np.uint8))
    return masks


def inner_point(mask: np.ndarray) -> list[float]:
    """A point well inside the mask: the mask pixel closest to its centroid."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return [float(xs[k]), float(ys[k])]


def jpeg_bytes(h: int, w: int, seed: int, quality: int = 90) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sa1b_record(stem: str, h: int, w: int, count: int, seed: int, polygon_every: int = 0) -> dict:
    """An SA-1B annotation JSON for ``stem`` with ``count`` RLE masks (polygons for every n-th one)."""
    from pycocotools import mask as mask_utils

    anns = []
    for i, mask in enumerate(make_masks(h, w, count, seed)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        seg: object = rle
        if polygon_every and i % polygon_every == polygon_every - 1:
            seg = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        anns.append({"id": 1000 * seed + i, "segmentation": seg, "bbox": [x, y, bw, bh],
                     "area": int(mask.sum()), "predicted_iou": 0.9, "stability_score": 0.95,
                     "crop_box": [0, 0, w, h], "point_coords": [inner_point(mask)]})
    return {"image": {"image_id": seed, "width": w, "height": h, "file_name": f"{stem}.jpg"}, "annotations": anns}


def write_sa1b_split(root: Path, split: str, count: int, size: tuple[int, int] = (48, 64), anns: int = 6,
                     first: int = 1) -> list[str]:
    """Write ``count`` image/annotation pairs under ``root/images/split`` and ``root/annotations/split``."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    stems = []
    for k in range(first, first + count):
        stem = f"sa_{k}"
        h, w = size if k % 2 else size[::-1]
        (root / "images" / split / f"{stem}.jpg").write_bytes(jpeg_bytes(h, w, k))
        record = sa1b_record(stem, h, w, anns, k, polygon_every=3)
        (root / "annotations" / split / f"{stem}.json").write_text(json.dumps(record))
        stems.append(stem)
    return stems


def build_shard(path: Path, first_id: int, count: int, extra: list[tuple[tarfile.TarInfo, bytes | None]] = (),
                size: tuple[int, int] = (40, 56), prefix: str = "") -> dict[str, bytes]:
    """Write an SA-1B-style tar of ``count`` jpg/json pairs; returns ``{file name: bytes}`` of its members."""
    contents: dict[str, bytes] = {}
    with tarfile.open(path, "w") as tar:
        for k in range(first_id, first_id + count):
            stem = f"sa_{k}"
            h, w = size
            pairs = ((f"{stem}.jpg", jpeg_bytes(h, w, k)),
                     (f"{stem}.json", json.dumps(sa1b_record(stem, h, w, 3, k)).encode()))
            for name, data in pairs:
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                contents[name] = data
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return contents


def write_links(path: Path, entries: dict[str, str]) -> Path:
    """A links file in Meta's format (header with the odd spacing Meta's file has)."""
    lines = ["file_name\t    cdn_link"] + [f"{name}.tar\t{link}" for name, link in entries.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def sa1b_root(tmp_path: Path) -> Path:
    """A small extracted SA-1B dataset: 4 val images, mixed orientation, RLE and polygon masks."""
    root = tmp_path / "SA-1B"
    write_sa1b_split(root, "val", 4)
    return root


@pytest.fixture()
def fakes():
    """The builders above, for tests (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(make_masks=make_masks, inner_point=inner_point, jpeg_bytes=jpeg_bytes,
                           sa1b_record=sa1b_record, write_sa1b_split=write_sa1b_split, build_shard=build_shard,
                           write_links=write_links)
