"""Your own data, read by one layer for ``finetune`` and ``evaluate``: COCO polygons, COCO RLE, a mask folder
(per-object PNGs or one instance-id PNG) give the same objects and the same training targets; bad files are
refused with one line naming the file and the object."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesam_core.errors import DatasetError
from edgesam_core.evaluation.samples import KeptImages, open_user_dataset, read_image_list
from edgesam_core.training.finetune import low_res_target, split_samples
from tests.helpers.shapes_dataset import make_images, write_coco, write_mask_folder


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    images = make_images(6, seed=3)
    root = tmp_path_factory.mktemp("user_data")
    return images, {
        "coco-polygon": write_coco(root / "poly", images),
        "coco-rle": write_coco(root / "rle", images, rle=True),
        "folder-per-object": write_mask_folder(root / "per_object", images),
        "folder-instance-ids": write_mask_folder(root / "ids", images, per_object=False),
    }


def _objects(path):
    return [(s.key, s.height, s.width, [(o.mask(), o.box.tolist()) for o in s.objects])
            for s in open_user_dataset(path)]


def test_every_format_gives_the_same_objects_and_training_targets(layouts):
    images, paths = layouts
    reference = _objects(paths["coco-polygon"])
    assert [len(objs) for _, _, _, objs in reference] == [len(shapes) for _, shapes in images]
    for (_, shapes), (_, _, _, objs) in zip(images, reference):
        for shape, (mask, _) in zip(shapes, objs):
            np.testing.assert_array_equal(mask, shape.mask)  # the polygon as pycocotools rasterises it
    for name, path in paths.items():
        got = _objects(path)
        assert [g[:3] for g in got] == [r[:3] for r in reference], name
        for (_, _, _, a), (_, _, _, b) in zip(got, reference):
            assert len(a) == len(b), name
            for (mask_a, box_a), (mask_b, box_b) in zip(a, b):
                np.testing.assert_array_equal(mask_a, mask_b, err_msg=name)
                assert box_a == pytest.approx(box_b), name
                assert torch.equal(low_res_target(mask_a, 128, 32), low_res_target(mask_b, 128, 32))


def test_mask_folder_names_classes_and_split_is_stable(layouts):
    images, paths = layouts
    dataset = open_user_dataset(paths["folder-per-object"])
    samples = list(dataset)
    names = {dataset.categories[o.category_id] for s in samples for o in s.objects}
    assert names == {s.cls for _, shapes in images for s in shapes}
    train, held = split_samples(samples, 0.34, seed=0)
    assert len(held) == 2 and {s.key for s in train} | {s.key for s in held} == {s.key for s in samples}
    again = split_samples(list(reversed(samples)), 0.34, seed=0)
    assert {s.key for s in again[1]} == {s.key for s in held}
    assert {s.key for s in split_samples(samples, 0.34, seed=1)[1]} != {s.key for s in held} or len(samples) < 3


def test_image_lists_keep_only_the_named_images(layouts, tmp_path):
    _, paths = layouts
    listing = tmp_path / "keep.txt"
    listing.write_text("# held out\nimg_01.png\n\nimg_04\n")
    kept = KeptImages(open_user_dataset(paths["coco-rle"]), read_image_list(listing))
    assert [s.key for s in kept] == ["img_01", "img_04"] and len(kept) == 2
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DatasetError, match="lists no image"):
        read_image_list(tmp_path / "empty.txt")


def test_bad_annotations_are_one_line_naming_file_and_object(layouts, tmp_path):
    _, paths = layouts
    data = json.loads(paths["coco-polygon"].read_text())
    data["annotations"][2]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
    bad = paths["coco-polygon"].parent / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"bad\.json: annotation 3 .*polygon") as err:
        list(open_user_dataset(bad))
    assert "\n" not in str(err.value)
    data["annotations"][2]["segmentation"] = {"size": [5, 5], "counts": "abc"}
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="annotation 3 .*belongs to another image"):
        list(open_user_dataset(bad))

    from PIL import Image

    folder = write_mask_folder(tmp_path / "wrong_size", make_images(2, seed=4))
    target = sorted((folder / "masks" / "img_01").glob("*.png"))[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(target)
    with pytest.raises(DatasetError, match=f"{target.name} is 10x10 but its image is 128x96"):
        list(open_user_dataset(folder))
    with pytest.raises(DatasetError, match="neither a COCO instances"):
        open_user_dataset(tmp_path)


def test_sa1b_style_json_gives_the_same_objects(layouts, tmp_path):
    """SA-1B's per-image JSON (RLE masks) read by the same layer: the same masks as the COCO file."""
    import shutil

    images, paths = layouts
    coco = json.loads(paths["coco-rle"].read_text())
    (tmp_path / "sa" / "annotations").mkdir(parents=True)
    shutil.copytree(paths["coco-rle"].parent / "images", tmp_path / "sa" / "images")
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        record = {"image": {"image_id": image["id"], "height": image["height"], "width": image["width"],
                            "file_name": image["file_name"]}, "annotations": anns}
        (tmp_path / "sa" / "annotations" / f"{image['file_name'][:-4]}.json").write_text(json.dumps(record))
    got, want = _objects(tmp_path / "sa"), _objects(paths["coco-polygon"])
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for (_, _, _, a), (_, _, _, b) in zip(got, want):
        for (mask_a, _), (mask_b, _) in zip(a, b):
            np.testing.assert_array_equal(mask_a, mask_b)
