"""load_image: modes, bit depths and EXIF orientation become displayed-orientation RGB uint8."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgesam_core.errors import InputError
from edgesam_core.inference.image_io import list_images, load_image


def _gradient(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def test_rgb_png_round_trip(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK"])
def test_modes_become_rgb(tmp_path, mode):
    image = Image.fromarray(_gradient()).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    out = load_image(path)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    if mode in ("L", "LA"):
        assert (out[..., 0] == out[..., 1]).all()


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    data = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_image(tmp_path / "deep.png")
    assert out.shape == (40, 60, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 120 <= out[20, 30, 0] <= 135  # mid-grey, not saturated at 255


def test_exif_orientation_is_honoured(tmp_path):
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[:, :10] = 255  # white band on the left of the stored pixels
    image = Image.fromarray(raw)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (60, 40, 3)  # displayed as portrait
    assert out[:10, :, 0].mean() > 200 and out[-10:, :, 0].mean() < 50  # left band moved to the top


def test_errors_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="Image not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="got a folder"):
        load_image(tmp_path)
    (tmp_path / "notes.jpg").write_text("hello, not a jpeg")
    with pytest.raises(InputError, match="Not an image file"):
        load_image(tmp_path / "notes.jpg")
    Image.fromarray(_gradient(200, 200)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="Corrupt or truncated") as info:
        load_image(tmp_path / "cut.jpg")
    assert "\n" not in str(info.value)


def test_permission_error_is_reported(tmp_path, monkeypatch):
    Image.fromarray(_gradient()).save(tmp_path / "a.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(InputError, match="permission denied"):
        load_image(tmp_path / "a.png")


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="No images"):
        list_images(empty)
