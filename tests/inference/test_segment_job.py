"""The segment job on a tiny model: mask choice, files written atomically, RLE == PNG, folder handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgesam_core.errors import InputError
from edgesam_core.inference import SamPredictor, segment_job
from edgesam_core.inference.segment_prompts import build_prompts
from edgesam_core.progress import NullProgress

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2


@pytest.fixture()
def predictor(debug_model):
    return SamPredictor(debug_model)


@pytest.fixture()
def photo_path(tmp_path, small_image):
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(small_image).save(path)
    return path


@pytest.mark.parametrize(
    ("points", "boxes", "multimask", "expected"),
    [(["30,40"], [], None, 1),  # a click: best of 4 by stability
     (["30,40"], [], True, 3),
     (["30,40"], [], False, 1),
     ([], ["5,5,60,50", "20,10,100,80"], None, 2),  # one mask per box
     (["30,40"], ["5,5,60,50", "20,10,100,80"], True, 6)],
)
def test_predict_prompts_mask_counts(predictor, small_image, points, boxes, multimask, expected):
    predictor.set_image(small_image)
    results = segment_job.predict_prompts(predictor, build_prompts(points, boxes=boxes), multimask)
    assert len(results) == expected
    for r in results:
        assert r.mask.shape == (90, 120) and r.mask.dtype == bool and 0.0 <= r.score <= 1.0


def test_best_of_four_uses_the_highest_stability(predictor, small_image):
    predictor.set_image(small_image)
    prompts = build_prompts(["30,40"])
    [best] = segment_job.predict_prompts(predictor, prompts, None)
    low_res = predictor.predict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]),
                                num_multimask_outputs=4).low_res_logits
    stability = (low_res > 1).sum(axis=(1, 2)) / np.maximum((low_res > -1).sum(axis=(1, 2)), 1)
    assert best.score == pytest.approx(float(stability.max()), abs=1e-6)


def test_outputs_written_and_rle_equals_png(predictor, photo_path, tmp_path):
    from pycocotools import mask as mask_utils

    out = tmp_path / "out"
    prompts = build_prompts(["30,40"], boxes=["5,5,60,50"])
    report = segment_job.segment_images(photo_path, predictor, prompts, out, multimask=True,
                                        meta={"model": "edge_sam_dyt_debug"})
    names = sorted(p.name for p in out.iterdir())
    assert names == ["photo.json", "photo_mask0.png", "photo_mask1.png", "photo_mask2.png", "photo_overlay.png"]
    doc = json.loads((out / "photo.json").read_text())
    assert doc["model"] == "edge_sam_dyt_debug" and (doc["height"], doc["width"]) == (90, 120)
    assert len(doc["masks"]) == 3 == len(report.images[0].masks)
    for record in doc["masks"]:
        png = np.asarray(Image.open(out / record["file"]))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        decoded = mask_utils.decode({**record["segmentation"], "counts": record["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), png == 255)
        assert record["area"] == int((png == 255).sum())
        assert record["prompt"] == {"points": [[30.0, 40.0]], "labels": [1], "box": [5.0, 5.0, 60.0, 50.0]}
        if record["area"]:
            ys, xs = np.nonzero(png)
            assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    overlay = np.asarray(Image.open(out / "photo_overlay.png"))
    assert overlay.shape == (90, 120, 3)
    # A rerun with fewer masks removes the stale ones of the first run.
    segment_job.segment_images(photo_path, predictor, prompts, out, multimask=False)
    assert sorted(p.name for p in out.glob("photo_mask*.png")) == ["photo_mask0.png"]


def test_failure_leaves_nothing_half_written(predictor, photo_path, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def broken_overlay(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segment_job, "render_overlay", broken_overlay)
    with pytest.raises(InputError, match="Cannot write results"):
        segment_job.segment_images(photo_path, predictor, build_prompts(["30,40"]), out)
    assert list(out.iterdir()) == []  # neither masks nor temporaries


def test_folder_input_skips_bad_files_and_disambiguates_stems(predictor, small_image, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(small_image).save(folder / "a.png")
    Image.fromarray(small_image).save(folder / "a.jpg")
    Image.fromarray(small_image[:40, :50]).save(folder / "b.png")  # too small for the point below
    (folder / "c.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    logs = []

    class Recorder(NullProgress):
        def log(self, message: str) -> None:
            logs.append(message)

    report = segment_job.segment_images(folder, predictor, build_prompts(["60,45"]), tmp_path / "out",
                                        progress=Recorder())
    assert [r.image.name for r in report.images] == ["a.jpg", "a.png", "b.png", "c.jpg"]
    assert [r.image.name for r in report.failed] == ["b.png", "c.jpg"]
    assert "outside" in report.failed[0].error and "Not an image" in report.failed[1].error
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "a_jpg.json" in written and "a_png.json" in written and not any(n.startswith("b") for n in written)
    assert len(logs) == 2


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match="Cannot write to output folder"):
        segment_job.prepare_out_dir(blocker / "sub")


def test_everything_mode_writes_masks(predictor, photo_path, tmp_path, monkeypatch):
    fake = [{"segmentation": np.eye(90, 120, dtype=bool), "area": 90, "stability_score": 0.97,
             "predicted_iou": 0.9, "point_coords": [[3.0, 4.0]]}]

    class FakeGenerator:
        def __init__(self, predictor, **kwargs):
            assert kwargs["output_mode"] == "binary_mask"

        def generate(self, image, boxes=None):
            assert boxes is None  # the grid (no --proposals)
            return fake

    from edgesam_core.inference import automatic_mask_generator

    monkeypatch.setattr(automatic_mask_generator, "SamAutomaticMaskGenerator", FakeGenerator)
    report = segment_job.segment_images(photo_path, predictor, build_prompts(everything=True), tmp_path / "o")
    [record] = report.images[0].masks
    assert record["area"] == 90 and record["prompt"] == {"point": [3.0, 4.0]} and record["score"] == 0.97


def _folder(tmp_path, small_image, count):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.roll(small_image, 7 * i, axis=1)).save(folder / f"im{i}.png")
    return folder


class _Counting:
    """A predictor that counts the images it encodes."""

    def __init__(self, predictor):
        self._predictor, self.encoded = predictor, 0

    def set_image(self, image):
        self.encoded += 1
        self._predictor.set_image(image)

    def __getattr__(self, name):
        return getattr(self._predictor, name)


def test_resume_skips_complete_images_of_the_same_job_only(predictor, small_image, tmp_path):
    folder = _folder(tmp_path, small_image, 3)
    out = tmp_path / "out"
    prompts = build_prompts(["60,45"])
    first = segment_job.segment_images(folder, predictor, prompts, out, meta={"model": "m"})
    assert [r.skipped for r in first.images] == [False] * 3
    (out / "im1_overlay.png").unlink()  # an interrupted image: its outputs are incomplete
    counting = _Counting(predictor)
    again = segment_job.segment_images(folder, counting, prompts, out, meta={"model": "m"}, resume=True)
    assert [r.skipped for r in again.images] == [True, False, True] and counting.encoded == 1
    assert (out / "im1_overlay.png").is_file()
    # Other prompts (or another model) are another job: nothing is reused.
    other = _Counting(predictor)
    segment_job.segment_images(folder, other, build_prompts(["20,20"]), out, meta={"model": "m"}, resume=True)
    assert other.encoded == 3
    assert json.loads((out / "im0.json").read_text())["job"]["prompts"]["points"] == [[20.0, 20.0]]


def test_shards_split_a_folder_and_share_the_output_folder(predictor, small_image, tmp_path):
    folder = _folder(tmp_path, small_image, 5)
    out = tmp_path / "out"
    prompts = build_prompts(["60,45"])
    reports = [segment_job.segment_images(folder, predictor, prompts, out, shard=(rank, 2)) for rank in (0, 1)]
    names = [[r.image.name for r in report.images] for report in reports]
    assert names == [["im0.png", "im2.png", "im4.png"], ["im1.png", "im3.png"]]
    assert sorted(p.name for p in out.glob("*.json")) == [f"im{i}.json" for i in range(5)]


def test_shard_from_torchrun_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert segment_job.shard_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert segment_job.shard_from_env() == (1, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="WORLD_SIZE"):
        segment_job.shard_from_env()


@pytest.mark.parametrize("mode", ["grid", "fast", "proposals", "click"])
def test_each_image_is_encoded_once(predictor, photo_path, tmp_path, monkeypatch, mode):
    """Everything mode's generator encodes the image itself: the job must not encode it a second time first
    (it did: every `segment --everything` paid one extra encoder run per image)."""
    calls = []
    original = predictor.set_image
    monkeypatch.setattr(predictor, "set_image", lambda image, *a, **k: (calls.append(image.shape), original(image)))
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[5, 5, 60, 50]]")
    prompts = {"grid": dict(everything=True), "fast": dict(everything=True, fast=True),
               "proposals": dict(everything=True, proposals=boxes), "click": dict(points=["30,40"])}[mode]
    segment_job.segment_images(photo_path, predictor, build_prompts(**prompts), tmp_path / "o")
    assert len(calls) == 1
