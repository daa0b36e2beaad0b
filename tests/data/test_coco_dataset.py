"""COCODataset on a generated instances JSON: crowd/empty images skipped, boxes and mask-centre points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesam_core.data.coco import COCODataset
from edgesam_core.errors import DatasetError

S = 64


@pytest.fixture()
def coco_root(tmp_path, fakes):
    """COCO layout: 3 images (one crowd-only, one without annotations), RLE and polygon masks."""
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for image_id, (h, w) in zip((7, 3, 11), ((40, 60), (50, 30), (32, 32)), strict=True):
        name = f"{image_id:012d}.jpg"
        (root / "val2017" / name).write_bytes(fakes.jpeg_bytes(h, w, image_id))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        if image_id == 11:
            continue  # an image without annotations
        for k, mask in enumerate(fakes.make_masks(h, w, 4, image_id)):
            rle = mask_utils.encode(np.asfortranarray(mask))
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            seg = ({"size": rle["size"], "counts": rle["counts"].decode()} if k % 2 == 0
                   else [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]])
            anns.append({"id": 100 * image_id + k, "image_id": image_id, "category_id": k + 1, "bbox": [x, y, bw, bh],
                         "area": float(mask.sum()), "segmentation": seg, "iscrowd": int(image_id == 3 and k == 0)})
    data = {"images": images, "annotations": anns, "categories": [{"id": i} for i in range(1, 5)]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_coco_boxes_points_and_skips(coco_root):
    ds = COCODataset(coco_root, "val", img_size=S, point_source="mask_center", load_gt_masks=True)
    assert [e[0] for e in ds.entries] == [3, 7], "sorted by id; the image without annotations is left out"
    _, first = ds[0]
    assert first["image_id"] == "3" and first["annotation_ids"].tolist() == [301, 302, 303], "crowd skipped"
    assert first["category_ids"].tolist() == [2, 3, 4]
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, S, S)
        h, w = target["img_size_before_pad"]
        boxes, points, masks = target["prompt_box"], target["prompt_point"], target["gt_mask"]
        assert boxes.shape[0] == points.shape[0] == masks.shape[0] > 0
        assert torch.all(boxes[:, 2] <= w + 1e-4) and torch.all(boxes[:, 3] <= h + 1e-4)
        for k in range(len(boxes)):
            px, py = points[k, 0].tolist()
            ix, iy = int(round(px)), int(round(py))
            assert masks[k, max(iy - 1, 0): iy + 2, max(ix - 1, 0): ix + 2].any(), "mask-centre point in mask"
    boxes_only = COCODataset(coco_root, "val", img_size=S)
    assert "prompt_point" not in boxes_only[0][1]
    centre = COCODataset(coco_root, "val", img_size=S, point_source="box_center")[1][1]
    b = centre["prompt_box"]
    centres = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    assert torch.allclose(centre["prompt_point"][:, 0], centres)


def test_coco_upstream_layout_and_errors(coco_root, tmp_path):
    (coco_root / "val2017").rename(coco_root / "trainval")
    ds = COCODataset(coco_root, "val", img_size=S, num_samples=1)
    assert ds.image_dir.name == "trainval" and len(ds) == 1
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        COCODataset(coco_root, "train", img_size=S)
    with pytest.raises(DatasetError, match="image_dir"):
        COCODataset(coco_root, "val", image_dir="nowhere", img_size=S)
    (coco_root / "annotations" / "ignore.json").write_text(json.dumps(["000000000003.jpg"]))
    assert [e[0] for e in COCODataset(coco_root, "val", img_size=S).entries] == [7]
    (coco_root / "trainval" / "000000000007.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="000000000007.jpg"):
        COCODataset(coco_root, "val", img_size=S, on_error="raise")[0]
