"""The evaluation loop on generated SA-1B- and COCO-format sets with test-double predictors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgesam_core.errors import ConfigError, DatasetError
from edgesam_core.evaluation import evaluate, open_eval_dataset
from edgesam_core.evaluation.evaluate import select_objects
from edgesam_core.evaluation.report import CocoResultsWriter, plot_miou_vs_clicks, table_rows, write_json


def test_sa1b_reader_sorted_and_skips_unannotated(sa1b_root):
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    assert [s.key for s in ds] == ["sa_10", "sa_20"]  # sorted, sa_99 (no JSON) ignored
    sample = next(iter(ds))
    image = sample.image()
    assert image.shape == (160, 240, 3) and image.dtype == np.uint8
    obj = sample.objects[0]
    np.testing.assert_array_equal(obj.box, [5, 5, 25, 25])
    assert obj.mask().sum() == obj.area == 400 and obj.point == (15.0, 15.0)
    assert len(open_eval_dataset("sa1b", sa1b_root, "val", num_samples=1)) == 1


def test_coco_reader_polygons_rle_and_crowd(coco_root):
    ds = open_eval_dataset("coco", coco_root, "val")
    samples = list(ds)
    assert [s.image_id for s in samples] == [1, 2]  # image 3 has no annotation
    assert all(len(s.objects) == 3 for s in samples)  # crowd annotation dropped
    polygon = samples[0].objects[0].mask()
    assert abs(int(polygon.sum()) - 400) <= 45  # rasterised polygon of a 20x20 square
    assert samples[0].objects[1].category_id == 2


def test_readers_report_missing_data(tmp_path):
    with pytest.raises(DatasetError, match="No SA-1B split"):
        open_eval_dataset("sa1b", tmp_path, "val")
    with pytest.raises(DatasetError, match="instances_val2017.json"):
        open_eval_dataset("coco", tmp_path, "val")
    with pytest.raises(DatasetError, match="Unknown evaluation dataset"):
        open_eval_dataset("lvis", tmp_path, "val")


@pytest.mark.parametrize("data", ["sa1b", "coco"])
@pytest.mark.parametrize("prompt", ["box", "point-center", "point-random", "box-center", "point-annotated"])
def test_oracle_scores_exactly_100(data, prompt, sa1b_root, coco_root, oracle_cls):
    ds = open_eval_dataset(data, sa1b_root if data == "sa1b" else coco_root, "val")
    if prompt == "point-annotated" and data == "coco":
        with pytest.raises(ConfigError, match="point_coords"):
            evaluate(oracle_cls(ds), ds, prompt=prompt)
        return
    report = evaluate(oracle_cls(ds), ds, prompt=prompt, refine_clicks=2, num_multimask_outputs=3)
    assert report.num_images == 2 and report.num_prompts == 6
    for click in (1, 2, 3):
        assert report.miou(click) == 100.0
    summary = report.to_dict()
    assert summary["clicks"][0]["all"] == {"miou": 100.0, "count": 6}
    assert {summary["clicks"][0][b]["count"] for b in ("small", "medium", "large")} == {2}
    json.dumps(summary)


def test_refinement_click_fixes_degraded_prediction(sa1b_root, oracle_cls):
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    predictor = oracle_cls(ds, degrade_first=True)
    report = evaluate(predictor, ds, prompt="box", refine_clicks=1)
    assert 40.0 < report.miou(1) < 60.0  # roughly half of every mask is missing
    assert report.miou(2) == 100.0
    second = [c for c in predictor.calls if c["points"] is not None]
    assert len(second) == 6
    for call in second:  # box kept, one positive click in the missing right half of the box
        assert call["box"] is not None and call["labels"].tolist() == [1]
        x0, _, x1, _ = call["box"]
        assert (x0 + x1) / 2 - 1 <= call["points"][0][0] < x1


def test_reference_agreement_and_num_samples(sa1b_root, oracle_cls):
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    degraded = oracle_cls(ds, degrade_first=True)
    report = evaluate(degraded, ds, prompt="point-center", reference_predictor=oracle_cls(ds, True),
                      num_samples=1)
    assert report.num_images == 1 and report.num_prompts == 3
    assert report.miou(1) == 100.0 and report.settings["target"] == "reference"


def test_max_prompts_subset_is_seeded_without_replacement(sa1b_root, oracle_cls):
    sample = next(iter(open_eval_dataset("sa1b", sa1b_root, "val")))
    objs = list(sample.objects) * 4
    a = select_objects(objs, 5, seed=0, key="k")
    assert len(a) == 5 and a == select_objects(objs, 5, seed=0, key="k")
    assert len({id(o) for o in a}) <= 5 and select_objects(objs, None, 0, "k") == objs
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    assert evaluate(oracle_cls(ds), ds, max_prompts=2).num_prompts == 4


def test_invalid_settings_raise_config_error(sa1b_root, oracle_cls):
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    for kwargs in ({"prompt": "lasso"}, {"refine_clicks": -1}, {"num_multimask_outputs": 2},
                   {"multimask_select": "best"}):
        with pytest.raises(ConfigError):
            evaluate(oracle_cls(ds), ds, **kwargs)


def test_reports_and_coco_results_score_in_cocoeval(coco_root, tmp_path, capsys, oracle_cls):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = open_eval_dataset("coco", coco_root, "val")
    writer = CocoResultsWriter()
    report = evaluate(oracle_cls(ds, degrade_first=True), ds, prompt="box", refine_clicks=1, on_mask=writer)
    paths = writer.write(tmp_path / "out")
    assert [p.name for p in paths] == ["coco_gt.json", "coco_results_click1.json", "coco_results_click2.json"]
    stats = []
    for results in paths[1:]:
        gt = COCO(str(paths[0]))
        evaluator = COCOeval(gt, gt.loadRes(str(results)), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats.append(evaluator.stats[0])
    assert stats[1] == pytest.approx(1.0, abs=1e-6)  # after the click every mask is the GT: AP = 1
    assert stats[0] < 0.5  # half masks (IoU ~0.5) fail most IoU thresholds

    columns, rows = table_rows(report)
    assert columns == ["click", "all", "small", "medium", "large"] and rows[1][1] == "100.00 (6)"
    png = plot_miou_vs_clicks(report, tmp_path / "out" / "miou_vs_clicks.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(write_json(report.to_dict(), tmp_path / "out" / "report.json").read_text())
    assert saved["clicks"][1]["all"]["miou"] == 100.0 and not math.isnan(saved["clicks"][0]["all"]["miou"])


def test_shards_and_resume_give_the_whole_runs_report(sa1b_root, oracle_cls, tmp_path):
    """Two shards writing into one results folder give, at the second, the single run's report (same IoUs, same
    order); a resumed run reads every image back without encoding one; another job's files are not reused."""
    from edgesam_core.evaluation.image_results import ImageResults

    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    whole = evaluate(oracle_cls(ds, degrade_first=True), ds, prompt="box", refine_clicks=1)
    job = {"prompt": "box", "refine_clicks": 1}
    first = evaluate(oracle_cls(ds, degrade_first=True), ds, prompt="box", refine_clicks=1,
                     results=ImageResults(tmp_path, job), shard=(0, 2))
    assert (first.computed_images, first.missing_images, first.num_images) == (1, 1, 1)
    assert first.to_dict()["missing_images"] == 1
    second = evaluate(oracle_cls(ds, degrade_first=True), ds, prompt="box", refine_clicks=1,
                      results=ImageResults(tmp_path, job), shard=(1, 2))
    assert (second.computed_images, second.missing_images, second.num_images) == (1, 0, 2)
    np.testing.assert_array_equal(second.ious, whole.ious)
    assert second.buckets == whole.buckets and second.clicks == whole.clicks

    class Counting(oracle_cls):
        encoded = 0

        def set_image(self, image, image_format="RGB"):
            Counting.encoded += 1
            super().set_image(image, image_format)

    resumed = evaluate(Counting(ds, degrade_first=True), ds, prompt="box", refine_clicks=1,
                       results=ImageResults(tmp_path, job), resume=True)
    assert Counting.encoded == 0 and resumed.clicks == whole.clicks and resumed.computed_images == 0
    other = evaluate(Counting(ds, degrade_first=True), ds, prompt="box", refine_clicks=1,
                     results=ImageResults(tmp_path, {**job, "refine_clicks": 2}), resume=True)
    assert Counting.encoded == 2 and other.computed_images == 2
    with pytest.raises(ConfigError, match="results folder"):
        evaluate(oracle_cls(ds), ds, shard=(0, 2))


def test_the_last_shard_to_finish_writes_the_whole_report_while_both_run(sa1b_root, oracle_cls, tmp_path):
    """Shards run at the same time: shard 1 passes shard 0's image before shard 0 has saved it (shard 0 finishes
    while shard 1 evaluates its own image). Shard 1 finishes last and must still report every image: other shards'
    results are read after a shard's own work, not as its loop passes them."""
    from edgesam_core.evaluation.image_results import ImageResults

    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    whole = evaluate(oracle_cls(ds), ds, prompt="box")
    job = {"prompt": "box"}
    ran_first = []

    class ShardOneFinishingLast(oracle_cls):
        def set_image(self, image, image_format="RGB"):
            ran_first.append(evaluate(oracle_cls(ds), ds, prompt="box", results=ImageResults(tmp_path, job),
                                      shard=(0, 2)))  # shard 0 runs to its end meanwhile
            super().set_image(image, image_format)

    last = evaluate(ShardOneFinishingLast(ds), ds, prompt="box", results=ImageResults(tmp_path, job), shard=(1, 2))
    assert ran_first[0].missing_images == 1  # shard 1's image was not saved yet when shard 0 finished
    assert last.missing_images == 0 and last.num_images == 2 and last.clicks == whole.clicks
    np.testing.assert_array_equal(last.ious, whole.ious)


def test_the_next_image_is_read_while_the_current_one_is_evaluated(sa1b_root, oracle_cls):
    import threading

    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    started = [threading.Event() for _ in range(len(ds))]

    class Slow:
        """The dataset with image(k) signalling its start."""

        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            for k, sample in enumerate(self.inner):
                yield Signalling(sample, k)

    class Signalling:
        """A sample whose ``image()`` first signals that reading image k has started."""

        def __init__(self, sample, k):
            self.sample, self.k = sample, k

        def __getattr__(self, name):
            return getattr(self.sample, name)

        def image(self):
            started[self.k].set()
            return self.sample.image()

    seen = []

    class Waiting(oracle_cls):
        def set_image(self, image, image_format="RGB"):
            k = len(seen)
            seen.append(k + 1 >= len(started) or started[k + 1].wait(timeout=10))  # next read already under way
            super().set_image(image, image_format)

    evaluate(Waiting(ds), Slow(ds), prompt="box")
    assert seen == [True] * len(ds)
