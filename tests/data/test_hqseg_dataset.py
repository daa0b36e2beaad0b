"""HQSeg-44K dataset: image/mask pairing per set, clear errors for missing folders, large-scale-jitter geometry
(flip, scale, crop, black padding, nearest labels) and per-(seed, epoch, index) determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_core.data.hqseg import HQSEG_TRAIN_SETS, HQSegDataset, JitterParams, apply_jitter, draw_jitter
from edgesam_core.data.transforms import PIXEL_MEAN, PIXEL_STD
from edgesam_core.errors import ConfigError, DatasetError
from tests.helpers.hqseg import add_strays, write_hqseg

S = 128


@pytest.fixture(scope="module")
def hq_root(tmp_path_factory):
    root = write_hqseg(tmp_path_factory.mktemp("hqseg") / "data", per_set=2)
    add_strays(root)
    return root


def test_pairs_every_set_in_sorted_order_and_skips_unpaired(hq_root, caplog):
    with caplog.at_level("WARNING"):
        ds = HQSegDataset(hq_root, img_size=S)
    assert len(ds) == 14  # 7 sets x 2; the lonely image and the orphan mask are left out
    assert [s.name for s, _ in ds.items][::2] == [s.name for s in HQSEG_TRAIN_SETS]
    assert [k for s, k in ds.items if s.name == "DUTS-TR"] == ["img_0", "img_1"]
    assert "zz_lonely" in caplog.text
    _, target = ds[6]
    assert target["image_id"] == "DUTS-TR/img_0" and target["file_name"] == "img_0.jpg"


def test_subsets_and_unknown_subset(hq_root):
    ds = HQSegDataset(hq_root, img_size=S, subsets=["ecssd", "DIS5K-TR"])
    assert sorted({s.name for s, _ in ds.items}) == ["DIS5K-TR", "ECSSD"]
    with pytest.raises(ConfigError, match="DUTS-TX.*DUTS-TR"):
        HQSegDataset(hq_root, img_size=S, subsets=["DUTS-TX"])


def test_missing_folder_is_named_with_how_to_get_the_data(tmp_path):
    root = write_hqseg(tmp_path / "data", sets=("DIS5K-TR", "DUTS-TR"))
    with pytest.raises(DatasetError) as err:
        HQSegDataset(root, img_size=S)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(root / "thin_object_detection" / "ThinObject5K" / "images_train") in msg
    assert "sam-hq-team/sam-hq-training" in msg and "--data-root" in msg and "data.subsets" in msg
    assert len(HQSegDataset(root, img_size=S, subsets=["DIS5K-TR", "DUTS-TR"])) == 2
    (root / "cascade_psp" / "DUTS-TR" / "img_0.png").unlink()
    with pytest.raises(DatasetError, match="No <name>.jpg"):
        HQSegDataset(root, img_size=S, subsets=["DUTS-TR"])


def test_item_shapes_black_padding_and_mask_levels(hq_root):
    ds = HQSegDataset(hq_root, img_size=S)
    black = (-torch.tensor(PIXEL_MEAN) / torch.tensor(PIXEL_STD)).view(3, 1)
    seen_padding = False
    for i in range(len(ds)):
        image, t = ds[i]
        h, w = t["img_size_before_pad"]
        assert image.shape == (3, S, S) and image.dtype == torch.float32
        assert 1 <= h <= S and 1 <= w <= S
        gt = t["gt_mask"]
        assert gt.dtype == torch.uint8 and gt.shape[1:] == (S, S)
        # Nearest-neighbour resizing never invents grey levels: the files hold only 0, 100 and 255.
        assert set(torch.unique(gt).tolist()) <= {0, 100, 255}
        pad = torch.ones(S, S, dtype=torch.bool)
        pad[:h, :w] = False
        if pad.any():
            seen_padding = True
            assert torch.allclose(image[:, pad], black.expand(3, int(pad.sum())), atol=1e-5)  # raw 0, normalised
            assert (gt[:, pad] == 0).all()
    assert seen_padding


def test_same_seed_epoch_index_gives_the_same_item_and_epochs_differ(hq_root):
    a, b = HQSegDataset(hq_root, img_size=S, seed=3), HQSegDataset(hq_root, img_size=S, seed=3)
    for i in (0, 5, 9):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["gt_mask"], tb["gt_mask"])
        assert torch.equal(ta["prompt_point"], tb["prompt_point"]) and ta["img_size_before_pad"] == tb[
            "img_size_before_pad"]
    b.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


def test_jitter_draw_follows_the_large_scale_jitter_rule():
    for seed in range(200):
        p = draw_jitter(300, 200, 1024, np.random.default_rng(seed))
        s = np.random.default_rng(seed)
        flip, scale = s.random() < 0.5, s.uniform(0.1, 2.0)
        assert (p.flip, p.scale) == (flip, scale)
        assert max(p.resized_hw) == round(scale * 1024)  # long side = s * 1024
        assert abs(p.resized_hw[1] / p.resized_hw[0] - 200 / 300) < 0.02  # aspect kept
        assert p.crop_hw == (min(1024, p.resized_hw[0]), min(1024, p.resized_hw[1]))
        for off, crop, size in zip(p.offset_yx, p.crop_hw, p.resized_hw):
            assert 0 <= off <= size - crop


def test_apply_jitter_flips_crops_and_pads_exactly():
    image = torch.arange(3 * 4 * 6, dtype=torch.float32).view(3, 4, 6)
    mask = (torch.arange(24).view(4, 6) % 6 < 2).to(torch.uint8) * 255  # left two columns
    params = JitterParams(flip=True, scale=1.0, resized_hw=(4, 6), offset_yx=(1, 2), crop_hw=(3, 4))
    out, gt = apply_jitter(image, mask, params, out_size=5)
    assert out.shape == (3, 5, 5) and gt.shape == (5, 5)
    assert torch.equal(out[:, :3, :4], image.flip(-1)[:, 1:4, 2:6])
    assert (out[:, 3:, :] == 0).all() and (out[:, :, 4:] == 0).all()
    assert torch.equal(gt[:3, :4], mask.flip(-1)[1:4, 2:6])  # the flipped mask's right columns
    assert gt[:3, 2:4].eq(255).all() and gt[:3, :2].eq(0).all() and (gt[3:] == 0).all()


def test_a_mask_of_the_wrong_size_is_skipped_or_reported_by_name(tmp_path):
    from PIL import Image

    root = write_hqseg(tmp_path / "data", per_set=2, sets=("ECSSD",))
    bad = root / "cascade_psp" / "ecssd" / "img_0.png"
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(bad)
    skipping = HQSegDataset(root, img_size=S, subsets=["ECSSD"])
    assert skipping[0][1]["image_id"] == "ECSSD/img_1" and skipping.num_skipped == 1
    with pytest.raises(DatasetError, match=r"img_0\.jpg.*img_0\.png.*7x9"):
        HQSegDataset(root, img_size=S, subsets=["ECSSD"], on_error="raise")[0]
