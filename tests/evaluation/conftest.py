"""Tiny generated SA-1B- and COCO-format datasets and test-double predictors for the evaluation tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Object rectangles (x0, y0, x1, y1) per image: one small (< 32^2), one medium, one large (>= 96^2).
RECTS = [
    [(5, 5, 25, 25), (40, 10, 80, 50), (100, 40, 210, 150)],
    [(10, 100, 30, 130), (150, 5, 200, 40), (20, 20, 130, 120)],
]
HEIGHT, WIDTH = 160, 240


def _rect_mask(rect: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = rect
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _write_image(path: Path, seed: int, rects: list[tuple[int, int, int, int]]) -> None:
    """Noise background with each object painted in its own colour (so a model sees structure)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in rects:
        image[y0:y1, x0:x1] = rng.integers(90, 255, 3, dtype=np.uint8)
    Image.fromarray(image).save(path, quality=90)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def sa1b_root(tmp_path: Path) -> Path:
    """``images/val/*.jpg`` + ``annotations/val/*.json`` with compressed-RLE masks (names unsorted on disk)."""
    root = tmp_path / "SA-1B"
    (root / "images" / "val").mkdir(parents=True)
    (root / "annotations" / "val").mkdir(parents=True)
    for index, stem in ((1, "sa_20"), (0, "sa_10")):  # written out of order on purpose
        _write_image(root / "images" / "val" / f"{stem}.jpg", index, RECTS[index])
        anns = []
        for j, rect in enumerate(RECTS[index]):
            mask = _rect_mask(rect)
            x0, y0, x1, y1 = rect
            anns.append({"id": 100 * index + j, "segmentation": _rle(mask), "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": int(mask.sum()), "point_coords": [[(x0 + x1) / 2, (y0 + y1) / 2]],
                         "predicted_iou": 0.9, "stability_score": 0.9, "crop_box": [0, 0, WIDTH, HEIGHT]})
        record = {"image": {"image_id": index, "width": WIDTH, "height": HEIGHT, "file_name": f"{stem}.jpg"},
                  "annotations": anns}
        (root / "annotations" / "val" / f"{stem}.json").write_text(json.dumps(record))
    (root / "images" / "val" / "sa_99.jpg").write_bytes(b"")  # no annotation: must be ignored
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """COCO layout: ``annotations/instances_val2017.json`` (polygons, RLE, one crowd) + ``val2017/*.jpg``."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for index in range(2):
        name = f"{index + 1:012d}.jpg"
        _write_image(root / "val2017" / name, 10 + index, RECTS[index])
        images.append({"id": index + 1, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for j, rect in enumerate(RECTS[index]):
            x0, y0, x1, y1 = rect
            if j == 0:  # a polygon tracing the rectangle's pixel edges
                segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            else:
                segmentation = _rle(_rect_mask(rect))
            anns.append({"id": 1000 + 10 * index + j, "image_id": index + 1, "category_id": 1 + j,
                         "segmentation": segmentation, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
    anns.append({"id": 5000, "image_id": 1, "category_id": 1, "segmentation": _rle(_rect_mask((0, 0, 5, 5))),
                 "bbox": [0, 0, 5, 5], "area": 25.0, "iscrowd": 1})
    images.append({"id": 3, "file_name": "missing_no_annotations.jpg", "height": HEIGHT, "width": WIDTH})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


class OraclePredictor:
    """Test double with the predictor interface: returns the ground-truth mask of the prompted object.

    The object is found by its box (box prompts) or as the smallest GT mask containing the first point.
    ``degrade_first`` removes the right half of the mask until a second point (a refinement click) arrives.
    """

    is_hq = False

    def __init__(self, dataset, degrade_first: bool = False) -> None:
        self.objects: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for sample in dataset:
            key = hashlib.sha1(sample.image().tobytes()).hexdigest()
            self.objects[key] = [(obj.mask(), np.asarray(obj.box, dtype=np.float32)) for obj in sample.objects]
        self.degrade_first = degrade_first
        self.current: list[tuple[np.ndarray, np.ndarray]] = []
        self.calls: list[dict] = []

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self.current = self.objects[hashlib.sha1(image.tobytes()).hexdigest()]
        self.original_size = image.shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, num_multimask_outputs=1,
                **kwargs):
        self.calls.append({"points": None if point_coords is None else np.array(point_coords),
                           "labels": None if point_labels is None else np.array(point_labels),
                           "box": None if box is None else np.array(box)})
        if box is not None:
            (mask,) = [m for m, b in self.current if np.allclose(b, box)]
        else:
            x, y = (int(v) for v in point_coords[0])
            mask = min((m for m, _ in self.current if m[y, x]), key=lambda m: m.sum())
        n_points = 0 if point_coords is None else len(point_coords)
        clicks = n_points if box is not None else n_points - 1  # points beyond the initial prompt
        if self.degrade_first and clicks == 0:
            cols = np.flatnonzero(mask.any(axis=0))
            mask = mask.copy()
            mask[:, (cols[0] + cols[-1] + 1) // 2:] = False
        masks = np.repeat(mask[None], num_multimask_outputs, axis=0)
        scores = np.linspace(1.0, 0.5, num_multimask_outputs, dtype=np.float32)
        return masks, scores, np.zeros((num_multimask_outputs, 32, 32), dtype=np.float32)


@pytest.fixture
def oracle_cls() -> type[OraclePredictor]:
    """The :class:`OraclePredictor` test double (a fixture so that test modules need not import conftest)."""
    return OraclePredictor


DEBUG_MODEL = "edge_sam_dyt_debug"


@pytest.fixture(scope="session")
def debug_model_files(tmp_path_factory) -> dict:
    """A seeded debug model with prompt-dependent masks, saved as .pth and exported to an ONNX pair."""
    pytest.importorskip("onnxruntime")
    import math

    import torch

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.models import build_sam

    out = tmp_path_factory.mktemp("debug_model")
    torch.manual_seed(0)
    model = build_sam(DEBUG_MODEL)
    # Default init gives near-constant logits (every mask is the whole image), which would make any two
    # backends agree trivially. Wider weights and zero biases give prompt-dependent masks of both signs.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 2.0 / math.sqrt(param[0].numel()))
            elif name.endswith("bias"):
                param.zero_()
    torch.save(model.state_dict(), out / "debug.pth")
    result = export_onnx(None, OnnxExportOptions(model_type=DEBUG_MODEL, out_dir=out, name="debug"), model=model)
    return {"model": model, "pth": out / "debug.pth", "onnx": result.files["encoder"]}
