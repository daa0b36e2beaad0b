"""``protocol="upstream"``: EdgeSAM's eval_mIoU.py GT resampling and random refinement clicks (spec §5.1).

The reference side is written with torch's own ``F.interpolate``, the ops upstream runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgesam_core.data.transforms import ResizeLongestSide
from edgesam_core.errors import ConfigError
from edgesam_core.evaluation import evaluate, open_eval_dataset
from edgesam_core.evaluation.upstream import upstream_click, upstream_iou, upstream_target


def _torch_target(gt: np.ndarray, img_size: int) -> np.ndarray:
    h, w = gt.shape
    nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    small = F.interpolate(torch.from_numpy(gt.astype(np.uint8))[None, None], (nh, nw), mode="nearest").float()
    return (F.interpolate(small, (h, w), mode="bilinear", align_corners=False) > 0)[0, 0].numpy()


def _torch_error_region(low_res: np.ndarray, gt: np.ndarray, img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's false-negative and false-positive cells on the low-res grid."""
    h, w = gt.shape
    nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    side = low_res.shape[-1]
    frame = torch.zeros(1, 1, img_size, img_size)
    frame[..., :nh, :nw] = F.interpolate(torch.from_numpy(gt.astype(np.uint8))[None, None], (nh, nw), mode="nearest")
    valid = torch.zeros(1, 1, img_size, img_size)
    valid[..., :nh, :nw] = 1
    valid = F.interpolate(valid, (side, side), mode="bilinear", align_corners=False)
    gt_down = F.interpolate(frame, (side, side), mode="bilinear", align_corners=False)
    pred = (torch.from_numpy(low_res)[None, None] > 0) * valid
    target = (gt_down > 0) * valid
    fn = ((pred != target) & (target == 1))[0, 0].numpy()
    fp = ((pred != target) & (target == 0))[0, 0].numpy()
    return fn, fp


def _blob(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.05, 0.25) * min(h, w)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return mask


def test_target_is_grown_by_one_model_pixel_by_hand():
    gt = np.zeros((256, 256), bool)
    gt[10:30, 40:80] = True
    target = upstream_target(gt, 128)  # scale 1/2: nearest keeps rows 10, 12, ..., bilinear back grows by 1 px
    expected = np.zeros_like(gt)
    expected[9:31, 39:81] = True
    np.testing.assert_array_equal(target, expected)
    assert upstream_iou(gt, target) == pytest.approx(800 / 924)
    assert np.isnan(upstream_iou(np.zeros_like(gt), np.zeros_like(gt)))


@pytest.mark.parametrize(("h", "w", "img_size"), [(160, 240, 128), (301, 97, 128), (150, 225, 1024), (462, 254, 128)])
def test_target_matches_torch_resampling(h, w, img_size):
    for seed in range(3):
        gt = _blob(h, w, seed)
        np.testing.assert_array_equal(upstream_target(gt, img_size), _torch_target(gt, img_size))


def test_click_is_drawn_from_upstreams_error_region():
    h, w, img_size = 160, 240, 128
    gt = _blob(h, w, 1)
    rng = np.random.default_rng(0)
    low_res = rng.normal(0, 1, (32, 32)).astype(np.float32)
    fn, fp = _torch_error_region(low_res, gt, img_size)
    nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    labels = set()
    for _ in range(200):
        click, (x, y) = upstream_click(low_res, gt, img_size, rng)
        assert (fn if click.label == 1 else fp)[click.y, click.x]
        labels.add(click.label)
        # the original-pixel point maps back to 4 x the grid cell in the model frame (no half-pixel shift)
        assert x * nw / w == pytest.approx(click.x * img_size / 32) and y * nh / h == pytest.approx(click.y * 4)
    assert labels == {0, 1}
    again = [upstream_click(low_res, gt, img_size, np.random.default_rng(5))[0] for _ in range(2)]
    assert again[0] == again[1]  # seeded


def test_small_error_region_gives_an_ignored_click_at_the_origin():
    h, w, img_size = 128, 128, 128
    gt = np.zeros((h, w), bool)
    gt[40:80, 40:80] = True
    low_res = np.where(F.interpolate(torch.from_numpy(gt[None, None].astype(np.float32)), (32, 32),
                                     mode="bilinear", align_corners=False)[0, 0].numpy() > 0, 5.0, -5.0)
    low_res = low_res.astype(np.float32)
    low_res[0, :9] = 5.0  # 9 wrong cells: below upstream's 10-pixel limit
    click, point = upstream_click(low_res, gt, img_size, np.random.default_rng(0))
    assert (click.x, click.y, click.label) == (0, 0, -2) and point == (0.0, 0.0)
    low_res[0, 9] = 5.0  # 10 wrong cells: a real click, a false positive in row 0
    click, _ = upstream_click(low_res, gt, img_size, np.random.default_rng(0))
    assert click.label == 0 and click.y == 0 and click.x < 10


def test_evaluate_with_the_upstream_protocol(sa1b_root, oracle_cls):
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    predictor = oracle_cls(ds, degrade_first=True)
    with pytest.raises(ConfigError, match="transform"):
        evaluate(predictor, ds, prompt="box", refine_clicks=1, protocol="upstream")
    predictor.transform = ResizeLongestSide(128)
    report = evaluate(predictor, ds, prompt="box", refine_clicks=1, protocol="upstream", max_prompts=None)
    assert report.settings["protocol"] == "upstream"
    # Click 1 scores the half mask against the resampled GT.
    expected = []
    for sample in ds:
        for obj in sample.objects:
            gt = obj.mask()
            half = gt.copy()
            cols = np.flatnonzero(gt.any(axis=0))
            half[:, (cols[0] + cols[-1] + 1) // 2:] = False
            expected.append(upstream_iou(half, upstream_target(gt, 128)))
    assert report.miou(1) == pytest.approx(100 * np.mean(expected))
    # The oracle's low-res logits are all negative, so the error region is the object's low-res footprint:
    # a false-negative click inside the object, or an ignored (0, 0) click for objects under 10 cells.
    second = [c for c in predictor.calls if c["points"] is not None]
    assert len(second) == 6
    kinds = []
    for call in second:
        assert call["box"] is not None and len(call["labels"]) == 1
        x, y = call["points"][0]
        x0, y0, x1, y1 = call["box"]
        small = call["labels"].tolist() == [-2]
        if small:
            assert (x, y) == (0, 0) and (x1 - x0) * (y1 - y0) <= 600  # only the two 'small' objects
        else:
            assert call["labels"].tolist() == [1] and x0 - 2 <= x <= x1 + 2 and y0 - 2 <= y <= y1 + 2
        kinds.append(small)
    assert 1 <= sum(kinds) <= 2
    # A perfect mask is not 100 under the upstream protocol (the resampled GT is larger).
    assert report.miou(2) < 100.0
    with pytest.raises(ConfigError, match="protocol"):
        evaluate(predictor, ds, protocol="kornia")


def test_cli_upstream_protocol_on_a_real_model_and_onnx(debug_model_files, sa1b_root, tmp_path):
    """Both backends accept the upstream protocol (-2 clicks included) and draw the same seeded clicks."""
    import json

    from typer.testing import CliRunner

    from edgesam_cli.main import app

    reports = {}
    for backend in ("pth", "onnx"):
        result = CliRunner().invoke(app, [
            "evaluate", "--checkpoint", str(debug_model_files[backend]), "--model", "edge_sam_dyt_debug",
            "--data-root", str(sa1b_root), "--prompt", "box", "--refine-clicks", "2", "--protocol", "upstream",
            "--out", str(tmp_path / backend), "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports[backend] = json.loads(result.stdout)
    assert reports["pth"]["settings"]["protocol"] == "upstream"
    for torch_click, onnx_click in zip(reports["pth"]["clicks"], reports["onnx"]["clicks"]):
        assert onnx_click["all"]["count"] == torch_click["all"]["count"] == 6
        assert abs(onnx_click["all"]["miou"] - torch_click["all"]["miou"]) / 100 <= 1e-3


def test_object_subset_is_upstreams_seeded_randint_with_replacement():
    from edgesam_core.evaluation.upstream import upstream_subset

    assert upstream_subset(5, 64, index=3) == [0, 1, 2, 3, 4]
    torch.manual_seed(7)  # what SA1BDataset.__getitem__(7) does with fix_seed
    expected = torch.randint(0, 100, (64,)).tolist()
    got = upstream_subset(100, 64, index=7)
    assert got == expected and len(set(got)) < 64  # with replacement: duplicates are scored twice, as upstream


def test_mask_center_is_upstreams_kornia_click_in_the_model_frame():
    """The click equals get_centroid_from_mask on the padded 1024-frame GT, mapped back to the original image."""
    kornia = pytest.importorskip("kornia")
    from edgesam_core.evaluation.upstream import upstream_mask_center

    img_size = 128
    for seed, (h, w) in enumerate([(90, 120), (120, 70), (64, 64)]):
        gt = _blob(h, w, seed)
        nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
        frame = torch.zeros(1, 1, img_size, img_size)
        frame[..., :nh, :nw] = F.interpolate(torch.from_numpy(gt.astype(np.uint8))[None, None].float(), (nh, nw),
                                             mode="nearest")
        mask = frame > 0.5
        dt = kornia.contrib.distance_transform((~F.pad(mask, pad=(1, 1, 1, 1), mode="constant", value=0)).float())
        dt = dt[:, :, 1:-1, 1:-1]
        row, col = int(torch.div(dt.argmax(), img_size, rounding_mode="floor")), int(dt.argmax() % img_size)
        x, y = upstream_mask_center(gt, img_size)
        # The predictor maps original pixels to the model frame by new/old size: the click lands on (col, row).
        assert x * nw / w == pytest.approx(col, abs=1e-9) and y * nh / h == pytest.approx(row, abs=1e-9)
        assert frame[0, 0, row, col] > 0  # inside the object


def test_upstream_protocol_reads_images_in_the_datasets_own_order(tmp_path):
    import json as _json

    from edgesam_core.evaluation.samples import SA1BEvalSet

    for name in ("b", "c", "a"):
        (tmp_path / "images" / "val").mkdir(parents=True, exist_ok=True)
        (tmp_path / "annotations" / "val").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / "val" / f"{name}.jpg").write_bytes(b"")
        (tmp_path / "annotations" / "val" / f"{name}.json").write_text(_json.dumps({"image": {}, "annotations": []}))
    import glob

    listing = [p.rsplit("/", 1)[-1][:-4] for p in glob.glob(f"{tmp_path}/images/val/*.jpg")]
    assert [p.stem for p, _ in SA1BEvalSet(tmp_path, "val", order="upstream").pairs] == listing
    assert [p.stem for p, _ in SA1BEvalSet(tmp_path, "val").pairs] == ["a", "b", "c"]
