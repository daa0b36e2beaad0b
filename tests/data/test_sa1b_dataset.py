"""SA1BDataset: sorted index, resize/normalise/pad, masks, prompts inside masks, sampling, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesam_core.data.collate import collate_fn
from edgesam_core.data.prompt_sampling import (
    box_centers,
    decode_segmentation,
    mask_center_point,
    prompt_rng,
    sample_prompt_indices,
)
from edgesam_core.data.sa1b import SA1BDataset
from edgesam_core.data.transforms import PIXEL_MEAN, PIXEL_STD, ResizeLongestSide
from edgesam_core.errors import DatasetError

S = 64


def _inside(mask: torch.Tensor, x: float, y: float, radius: int = 1) -> bool:
    """True when a mask pixel lies within ``radius`` of (x, y) (nearest resizing moves edges by < 1 px)."""
    ix, iy = int(round(x)), int(round(y))
    window = mask[max(iy - radius, 0): iy + radius + 1, max(ix - radius, 0): ix + radius + 1]
    return bool(window.any())


def test_items_prompts_and_masks_share_the_resized_frame(sa1b_root):
    ds = SA1BDataset(sa1b_root, split="val", img_size=S, max_prompts=16, load_gt_masks=True)
    assert ds.keys == sorted(ds.keys) and len(ds) == 4
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, S, S) and image.dtype == torch.float32
        (H, W), (h, w) = target["original_size"], target["img_size_before_pad"]
        assert (h, w) == ResizeLongestSide.get_preprocess_shape(H, W, S) and max(h, w) == S
        assert torch.all(image[:, h:, :] == 0) and torch.all(image[:, :, w:] == 0)
        record = json.loads((sa1b_root / "annotations" / "val" / f"{target['image_id']}.json").read_text())
        P = len(record["annotations"])
        boxes, points, masks = target["prompt_box"], target["prompt_point"], target["gt_mask"]
        assert boxes.shape == (P, 4) and points.shape == (P, 1, 2) and masks.shape == (P, S, S)
        assert masks.dtype == torch.uint8 and not masks[:, h:, :].any() and not masks[:, :, w:].any()
        sx, sy = w / W, h / H
        for k, ann in enumerate(record["annotations"]):
            x, y, bw, bh = ann["bbox"]
            expected = torch.tensor([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
            assert torch.allclose(boxes[k], expected, atol=1e-4), "xywh -> xyxy, scaled per axis"
            px, py = points[k, 0].tolist()
            assert boxes[k, 0] <= px <= boxes[k, 2] and boxes[k, 1] <= py <= boxes[k, 3]
            assert _inside(masks[k], px, py), f"point {px, py} not inside its mask ({target['image_id']}#{k})"
            ys, xs = torch.nonzero(masks[k], as_tuple=True)
            assert xs.min() >= boxes[k, 0] - 1.5 and xs.max() <= boxes[k, 2] + 1.5
            assert ys.min() >= boxes[k, 1] - 1.5 and ys.max() <= boxes[k, 3] + 1.5
        assert target["area"].tolist() == [float(a["area"]) for a in record["annotations"]]


def test_normalisation_uses_the_sam_pixel_statistics(tmp_path, fakes):
    from PIL import Image

    root = tmp_path / "SA-1B"
    fakes.write_sa1b_split(root, "val", 1, size=(S, S))
    flat = np.full((S, S, 3), (200, 100, 50), dtype=np.uint8)
    Image.fromarray(flat).save(root / "images" / "val" / "sa_1.jpg", quality=100)
    image, _ = SA1BDataset(root, "val", img_size=S)[0]
    jpeg = np.asarray(Image.open(root / "images" / "val" / "sa_1.jpg").convert("RGB"), dtype=np.float32)
    expected = (jpeg.mean(axis=(0, 1)) - np.array(PIXEL_MEAN)) / np.array(PIXEL_STD)
    assert np.allclose(image.mean(dim=(1, 2)).numpy(), expected, atol=1e-3)


def test_sampling_is_without_replacement_and_deterministic(tmp_path, fakes):
    root = tmp_path / "SA-1B"
    fakes.write_sa1b_split(root, "train", 3, anns=12)
    a = SA1BDataset(root, "train", img_size=S, max_prompts=5, seed=3)
    b = SA1BDataset(root, "train", img_size=S, max_prompts=5, seed=3)
    c = SA1BDataset(root, "train", img_size=S, max_prompts=5, seed=4)
    differs = False
    for i in range(len(a)):
        ids = a[i][1]["annotation_ids"]
        assert len(ids) == 5 and len(set(ids.tolist())) == 5, "no duplicate prompts"
        assert torch.equal(ids, a[i][1]["annotation_ids"]) and torch.equal(ids, b[i][1]["annotation_ids"])
        assert torch.equal(a[i][1]["prompt_box"], b[i][1]["prompt_box"])
        differs |= not torch.equal(ids, c[i][1]["annotation_ids"])
    assert differs, "another seed draws other prompts"
    before = a[0][1]["annotation_ids"]
    a.set_epoch(1)
    assert any(not torch.equal(a[i][1]["annotation_ids"], b[i][1]["annotation_ids"]) for i in range(len(a)))
    a.set_epoch(0)
    assert torch.equal(a[0][1]["annotation_ids"], before)
    rng = prompt_rng(0, 0)
    assert sorted(set(sample_prompt_indices(100, 64, rng).tolist())) == sample_prompt_indices(100, 64,
                                                                                              prompt_rng(0, 0)).tolist()
    assert len(set(sample_prompt_indices(100, 64, rng).tolist())) == 64
    assert sample_prompt_indices(3, 16, rng).tolist() == [0, 1, 2]


def test_num_samples_and_missing_annotations(tmp_path, fakes):
    root = tmp_path / "SA-1B"
    stems = fakes.write_sa1b_split(root, "val", 5)
    (root / "annotations" / "val" / f"{stems[1]}.json").unlink()
    ds = SA1BDataset(root, "val", img_size=S)
    assert ds.keys == sorted(s for s in stems if s != stems[1]) and ds.missing_annotations == [stems[1]]
    assert SA1BDataset(root, "val", img_size=S, num_samples=2).keys == ds.keys[:2]
    with pytest.raises(DatasetError, match="edgesam download-data"):
        SA1BDataset(root, "train", img_size=S)


@pytest.mark.parametrize("damage", ["json", "jpeg", "size"])
def test_unreadable_samples_are_skipped_or_raised(tmp_path, fakes, damage):
    root = tmp_path / "SA-1B"
    fakes.write_sa1b_split(root, "val", 3)
    if damage == "json":
        (root / "annotations" / "val" / "sa_2.json").write_text('{"image": {"height": 4')
    elif damage == "jpeg":
        path = root / "images" / "val" / "sa_2.jpg"
        path.write_bytes(path.read_bytes()[:300])
    else:
        record = json.loads((root / "annotations" / "val" / "sa_2.json").read_text())
        record["image"]["height"] += 7
        (root / "annotations" / "val" / "sa_2.json").write_text(json.dumps(record))
    ds = SA1BDataset(root, "val", img_size=S, on_error="skip")
    _, target = ds[1]
    assert target["image_id"] == "sa_3" and ds.num_skipped == 1
    assert "sa_2" in next(iter(ds.skipped))
    strict = SA1BDataset(root, "val", img_size=S, on_error="raise")
    with pytest.raises(DatasetError, match="sa_2"):
        strict[1]
    assert strict[0][1]["image_id"] == "sa_1"


def test_collate_keeps_variable_prompt_counts(tmp_path, fakes):
    from torch.utils.data import DataLoader

    root = tmp_path / "SA-1B"
    fakes.write_sa1b_split(root, "val", 2, anns=4)
    record = json.loads((root / "annotations" / "val" / "sa_2.json").read_text())
    record["annotations"] = record["annotations"][:1]
    (root / "annotations" / "val" / "sa_2.json").write_text(json.dumps(record))
    loader = DataLoader(SA1BDataset(root, "val", img_size=S), batch_size=2, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, S, S)
    assert [t["prompt_box"].shape[0] for t in targets] == [4, 1]
    assert [t["image_id"] for t in targets] == ["sa_1", "sa_2"]


def test_segmentation_formats_decode_to_the_same_mask(fakes):
    from pycocotools import mask as mask_utils

    mask = fakes.make_masks(30, 40, 1, seed=5)[0]
    rle = mask_utils.encode(np.asfortranarray(mask))
    as_text = {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    uncompressed = {"size": [30, 40], "counts": runs}
    for seg in (rle, as_text, uncompressed):
        assert np.array_equal(decode_segmentation(seg, 30, 40), mask)
    ys, xs = np.nonzero(mask)
    polygon = [[xs.min(), ys.min(), xs.max() + 1, ys.min(), xs.max() + 1, ys.max() + 1, xs.min(), ys.max() + 1]]
    box_mask = decode_segmentation([list(map(float, polygon[0]))], 30, 40)
    assert box_mask.sum() > 0 and box_mask[int(ys.mean()), int(xs.mean())] == 1
    with pytest.raises(DatasetError, match="differs"):
        decode_segmentation(rle, 31, 40)


def test_box_centres_and_mask_centre_points():
    assert box_centers(np.array([[10, 20, 30, 60]])).tolist() == [[20.0, 40.0]]
    yy, xx = np.mgrid[0:41, 0:41]
    ring = (((xx - 20) ** 2 + (yy - 20) ** 2 <= 400) & ((xx - 20) ** 2 + (yy - 20) ** 2 >= 100)).astype(np.uint8)
    x, y = mask_center_point(ring)
    assert ring[int(y), int(x)] == 1, "the point lies inside a ring even though its centroid does not"
    assert np.isnan(mask_center_point(np.zeros((5, 5)))).all()
