"""A small segmentation dataset made here: crops of real photos (matplotlib's sample data) with flat-coloured
shapes pasted on them (red discs, blue squares, green triangles, colours jittered), one shape per grid cell so
none overlaps another.

Each shape is a polygon; its mask is that polygon rasterised by pycocotools (the COCO decoder every reader
uses), so the same object written as a COCO polygon, a COCO RLE or a mask PNG decodes to the same pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("disc", "square", "triangle")
#: Each class's base colour (jittered by up to +-25 per channel): a class looks alike across images, as real ones do.
CLASS_COLOURS = {"disc": (215, 45, 40), "square": (40, 85, 215), "triangle": (45, 190, 70)}


@dataclass
class Shape:
    cls: str
    polygon: list[float]
    mask: np.ndarray


def _photos() -> list[np.ndarray]:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = np.asarray(im.convert("RGB"))
    return [photo, photo[:, ::-1], photo[::-1]]


def _polygon(cls: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[float]:
    if cls == "disc":
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    elif cls == "square":
        a = rng.uniform(0, np.pi / 2)
        angles = a + np.arange(4) * np.pi / 2
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    else:
        a = rng.uniform(0, 2 * np.pi)
        angles = a + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def make_images(count: int, size: tuple[int, int] = (96, 128), seed: int = 0, classes: tuple[str, ...] = CLASSES,
                exactly_one: str | None = None) -> list[tuple[np.ndarray, list[Shape]]]:
    """``count`` images (H x W x 3 uint8) with 1-3 shapes each, in a 2 x 2 grid of cells; with ``exactly_one``,
    every image holds exactly one shape of that class (the others are of the other classes)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    photos = _photos()
    h, w = size
    result = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        y = int(rng.integers(0, photo.shape[0] - h + 1))
        x = int(rng.integers(0, photo.shape[1] - w + 1))
        image = photo[y:y + h, x:x + w].copy()
        cells = rng.permutation(4)[: int(rng.integers(1, 4))]
        shapes = []
        for k, cell in enumerate(cells):
            row, col = divmod(int(cell), 2)
            ch, cw = h / 2, w / 2
            r = rng.uniform(0.3, 0.45) * min(ch, cw)
            cx = (col + 0.5) * cw + rng.uniform(-0.1, 0.1) * cw
            cy = (row + 0.5) * ch + rng.uniform(-0.1, 0.1) * ch
            pool = classes if exactly_one is None else (
                (exactly_one,) if k == 0 else tuple(c for c in classes if c != exactly_one))
            cls = pool[int(rng.integers(len(pool)))]
            polygon = _polygon(cls, cx, cy, r, rng)
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))).astype(bool)
            jitter = rng.integers(-25, 26, 3)
            image[mask] = np.clip(np.array(CLASS_COLOURS[cls]) + jitter, 0, 255).astype(np.uint8)
            shapes.append(Shape(cls, polygon, mask))
        result.append((image, shapes))
    return result


def write_mask_folder(root: Path, images: list[tuple[np.ndarray, list[Shape]]], per_object: bool = True) -> Path:
    """``root/images/img_NN.png`` + per-object ``masks/img_NN/<class>_<k>.png`` (or one instance-id PNG)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i, (image, shapes) in enumerate(images):
        Image.fromarray(image).save(root / "images" / f"img_{i:02d}.png")
        if per_object:
            folder = root / "masks" / f"img_{i:02d}"
            folder.mkdir(exist_ok=True)
            for k, shape in enumerate(shapes):
                Image.fromarray(shape.mask.astype(np.uint8) * 255).save(folder / f"{shape.cls}_{k}.png")
        else:
            ids = np.zeros(image.shape[:2], np.uint8)
            for k, shape in enumerate(shapes, start=1):
                ids[shape.mask] = k
            Image.fromarray(ids).save(root / "masks" / f"img_{i:02d}.png")
    return root


def write_coco(root: Path, images: list[tuple[np.ndarray, list[Shape]]], rle: bool = False) -> Path:
    """``root/images/img_NN.png`` + ``root/instances.json`` with polygons (or compressed RLE)."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    ann_id = 1
    for i, (image, shapes) in enumerate(images):
        name = f"img_{i:02d}.png"
        Image.fromarray(image).save(root / "images" / name)
        h, w = image.shape[:2]
        data["images"].append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for shape in shapes:
            ys, xs = np.nonzero(shape.mask)
            if rle:
                enc = mask_utils.encode(np.asfortranarray(shape.mask.astype(np.uint8)))
                seg = {"size": [h, w], "counts": enc["counts"].decode("ascii")}
            else:
                seg = [shape.polygon]
            data["annotations"].append({
                "id": ann_id, "image_id": i + 1, "category_id": CLASSES.index(shape.cls) + 1, "segmentation": seg,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "area": int(shape.mask.sum()), "iscrowd": 0})
            ann_id += 1
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path
