"""ResizeLongestSide: sizes, PIL-bilinear image resize (== upstream torchvision-on-PIL), coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_core.data.transforms import ResizeLongestSide


@pytest.mark.parametrize(
    ("h", "w", "target", "expected"),
    [
        (600, 512, 1024, (1024, 874)),  # 512 * 1024/600 = 873.8 -> 874
        (480, 640, 1024, (768, 1024)),
        (1, 1000, 1024, (1, 1024)),  # 1.024 + 0.5 -> 1
        (333, 777, 128, (55, 128)),  # 54.86 -> 55
        (1024, 1024, 1024, (1024, 1024)),
        (3, 2, 1024, (1024, 683)),  # 682.67 -> 683
    ],
)
def test_get_preprocess_shape_rounds_half_up(h, w, target, expected):
    assert ResizeLongestSide.get_preprocess_shape(h, w, target) == expected


def test_apply_image_matches_torchvision_resize_on_pil():
    """Upstream resizes with torchvision's ``resize(to_pil_image(img))``; we use PIL directly: identical bytes."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(75, 101, 3), dtype=np.uint8)
    transform = ResizeLongestSide(128)
    ours = transform.apply_image(image)
    theirs = np.array(tvf.resize(tvf.to_pil_image(image), list(transform.get_preprocess_shape(75, 101, 128))))
    assert ours.shape == (95, 128, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


def test_apply_image_output_is_writable_and_rejects_bad_input():
    out = ResizeLongestSide(64).apply_image(np.zeros((10, 20, 3), np.uint8))
    assert out.shape == (32, 64, 3) and out.flags.writeable
    with pytest.raises(ValueError, match="uint8"):
        ResizeLongestSide(64).apply_image(np.zeros((10, 20, 3), np.float32))


def test_coords_and_boxes_scale_per_axis():
    t = ResizeLongestSide(1024)
    coords = np.array([[500.0, 375.0], [0.0, 0.0]])
    out = t.apply_coords(coords, (600, 512))
    np.testing.assert_allclose(out[0], [500 * 874 / 512, 375 * 1024 / 600])
    assert coords[0, 0] == 500.0  # input untouched
    boxes = t.apply_boxes(np.array([10, 20, 30, 40]), (600, 512))
    assert boxes.shape == (1, 4)
    np.testing.assert_allclose(boxes[0], [10 * 874 / 512, 20 * 1024 / 600, 30 * 874 / 512, 40 * 1024 / 600])
    torch_boxes = t.apply_boxes_torch(torch.tensor([[10, 20, 30, 40]]), (600, 512))
    np.testing.assert_allclose(torch_boxes.numpy(), boxes, rtol=1e-6)
    torch_coords = t.apply_coords_torch(torch.tensor(coords), (600, 512))
    assert torch_coords.dtype == torch.float32
    np.testing.assert_allclose(torch_coords.numpy(), out, rtol=1e-6)


def test_torch_image_resize_is_close_to_pil():
    """The training-time antialiased resize differs from PIL by rounding only (mean abs < 1 grey level)."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(12, 16, 3)).astype(np.uint8)
    image = np.kron(base, np.ones((8, 8, 1), np.uint8))  # smooth-ish blocks, 96x128
    t = ResizeLongestSide(64)
    pil = t.apply_image(image).astype(np.float32)
    tensor = torch.as_tensor(image).permute(2, 0, 1)[None].float()
    resized = t.apply_image_torch(tensor)[0].permute(1, 2, 0).numpy()
    assert resized.shape == pil.shape
    assert np.abs(resized - pil).mean() < 1.0


def test_masks_nearest():
    masks = np.zeros((2, 10, 20), dtype=bool)
    masks[0, :5] = True
    out = ResizeLongestSide(40).apply_masks(masks)
    assert out.shape == (2, 20, 40) and out.dtype == bool
    assert out[0, :10].all() and not out[0, 10:].any() and not out[1].any()
    out_t = ResizeLongestSide(40).apply_masks_torch(torch.as_tensor(masks))
    np.testing.assert_array_equal(out_t.numpy(), out)


def test_numpy_masks_sample_like_torch_nearest():
    # torch's "nearest" (what upstream applies to GT masks) takes source index floor(i * in / out):
    # 5 -> 3 keeps rows/cols 0, 1, 3 (PIL's pixel-centre NEAREST would keep 0, 2, 4).
    grid = (np.arange(5)[:, None] * 10 + np.arange(5)[None, :]).astype(np.uint8)[None]
    out = ResizeLongestSide(3).apply_masks(grid)
    np.testing.assert_array_equal(out[0], grid[0][np.ix_([0, 1, 3], [0, 1, 3])])
    rng = np.random.default_rng(0)
    for shape, target in (((3, 77, 53), 32), ((2, 300, 450), 128), ((2, 33, 7), 128)):
        masks = rng.random(shape) > 0.5
        t = ResizeLongestSide(target)
        np.testing.assert_array_equal(t.apply_masks(masks), t.apply_masks_torch(torch.as_tensor(masks)).numpy())
