"""Load user images as ``HxWx3`` uint8 RGB arrays, whatever their mode, bit depth or EXIF orientation.

The image is rotated to its displayed orientation (EXIF ``Orientation`` honoured), so prompt coordinates
are in the frame a viewer shows. Every failure is an :class:`~edgesam_core.errors.InputError` with one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgesam_core.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name.

    Raises:
        InputError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Not a folder: {folder}")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    return found


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array in its displayed orientation.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit and float images are converted; 16-bit
    data is scaled to 8 bits rather than clipped.

    Args:
        path: the image file.

    Returns:
        ``HxWx3`` uint8 array.

    Raises:
        InputError: the file is missing, unreadable, not an image, or corrupt/truncated.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"Image not found: {path}")
    if path.is_dir():
        raise InputError(f"Expected an image file but got a folder: {path}")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is not an error for a local file; PIL's hard limit still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                return to_rgb_array(image)
    except PermissionError as exc:
        raise InputError(f"Cannot read image (permission denied): {path}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"Not an image file (unrecognised format): {path}") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(f"Image is too large to decode safely: {path}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncated or corrupt data as OSError/SyntaxError/ValueError depending on the codec.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"Corrupt or truncated image {path}: {reason}") from exc


def to_rgb_array(image: object) -> np.ndarray:
    """Convert a PIL image of any mode to an ``HxWx3`` uint8 RGB array."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit PNG/TIFF grayscale: PIL's convert("RGB") would clip at 255, so scale 0..65535 -> 0..255.
        data = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(data / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        data = np.asarray(image, dtype=np.float64)
        finite = data[np.isfinite(data)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(data) * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        # Palette images may carry transparency; go through RGBA so the palette is applied correctly.
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
