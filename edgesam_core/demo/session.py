"""The state behind ``edgesam demo``: one predictor, the last few uploaded images, and what is encoded.

An upload is decoded, checked and encoded once; every click then only runs the prompt encoder and mask
decoder on the stored embedding. Requests may arrive on several server threads, so all model work and
the image store are guarded by one lock (the predictor holds a single embedding at a time).
"""

from __future__ import annotations

import io
import math
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.demo.encoding import (
    colour_overlay,
    data_url,
    mask_bbox_xywh,
    mask_record,
    png_bytes,
    preview_data_url,
)
from edgesam_core.errors import InputError


class DemoRequestError(InputError):
    """A request the demo cannot serve; ``status`` is the HTTP status the server answers with."""

    status = 400


class UnknownImageError(DemoRequestError):
    """The image id was never uploaded or has been evicted."""

    status = 404


class TooLargeError(DemoRequestError):
    """An upload or request body, or an image's pixel count, is over the limit."""

    status = 413


class NotAnImageError(DemoRequestError):
    """The upload is not in an image format PIL can read."""

    status = 415


@dataclass(frozen=True)
class DemoLimits:
    """What the demo accepts; sent to the page by ``/api/info`` so it can check before uploading.

    Attributes:
        max_upload_bytes: largest accepted upload body.
        max_pixels: largest accepted ``width * height`` (decompression bombs are refused before decoding).
        max_images: uploads kept in memory; older ones are forgotten (their ids then give 404).
        max_points: most point prompts per request.
        max_json_bytes: largest accepted JSON request body.
    """

    max_upload_bytes: int = 20_000_000
    max_pixels: int = 16_800_000  # a little over 4096x4096
    max_images: int = 8
    max_points: int = 64
    max_json_bytes: int = 1024 * 1024


#: Settings of the automatic mask generator for the "Everything" button: a 16x16 grid (256 prompts) is
#: about 4x faster than the generator's 32x32 default and still finds the large objects.
EVERYTHING_DEFAULTS: dict[str, Any] = {"points_per_side": 16, "points_per_batch": 64}


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes into an ``HxWx3`` uint8 RGB array in the displayed (EXIF) orientation.

    The pixel count is checked from the header, before any pixel data is decoded.

    Raises:
        DemoRequestError: empty or corrupt data. NotAnImageError: not an image. TooLargeError: too many pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from edgesam_core.inference.image_io import to_rgb_array

    if not data:
        raise DemoRequestError("The upload is empty: choose an image file")
    with warnings.catch_warnings():
        # PIL only warns below twice its own limit; treat its warning as the refusal it stands for.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise NotAnImageError("Not an image: upload a PNG, JPEG, WebP, BMP, GIF or TIFF file") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooLargeError(f"Image has too many pixels (limit {max_pixels:,})") from exc
        with opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise TooLargeError(f"Image is {width}x{height} = {width * height:,} pixels; the limit is "
                                    f"{max_pixels:,} (restart with a larger --max-megapixels or resize it)")
            if width < 1 or height < 1:
                raise DemoRequestError(f"Image has no pixels ({width}x{height})")
            try:
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                return to_rgb_array(image)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DemoRequestError(f"Corrupt or truncated image: {reason}") from exc


@dataclass
class _Stored:
    image: np.ndarray
    name: str


@dataclass
class PromptSet:
    """Checked prompts of one ``segment`` request, in original-image pixels."""

    points: list[list[float]]
    labels: list[int]
    box: list[float] | None

    def as_arrays(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(coords Nx2 | None, labels N | None, box 4 | None)`` for ``Predictor.predict``."""
        coords = np.asarray(self.points, dtype=np.float64).reshape(-1, 2) if self.points else None
        labels = np.asarray(self.labels, dtype=np.int64) if self.points else None
        box = np.asarray(self.box, dtype=np.float64) if self.box is not None else None
        return coords, labels, box


def check_prompts(points: Any, labels: Any, box: Any, width: int, height: int, max_points: int) -> PromptSet:
    """Validate JSON prompts against the image size.

    Args:
        points: list of ``[x, y]`` pixel positions (x in ``[0, width]``, y in ``[0, height]``).
        labels: one label per point: 1 foreground, 0 background.
        box: None or ``[x0, y0, x1, y1]`` inside the image with ``x0 < x1`` and ``y0 < y1``.

    Raises:
        DemoRequestError: the first problem found, in one line.
    """
    points = [] if points is None else points
    labels = [] if labels is None else labels
    if not isinstance(points, list) or not isinstance(labels, list):
        raise DemoRequestError("'points' and 'labels' must be JSON lists")
    if len(points) != len(labels):
        raise DemoRequestError(f"got {len(points)} points but {len(labels)} labels; give one label per point")
    if len(points) > max_points:
        raise DemoRequestError(f"too many points ({len(points)}); the limit is {max_points}")
    checked: list[list[float]] = []
    for i, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)):
            raise DemoRequestError(f"point {i} must be [x, y] numbers, got {point!r}")
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= width and 0 <= y <= height):
            raise DemoRequestError(f"point {i} ({x:g}, {y:g}) is outside the {width}x{height} image")
        checked.append([x, y])
    for i, label in enumerate(labels):
        if label not in (0, 1) or isinstance(label, bool):
            raise DemoRequestError(f"label {i} must be 1 (foreground) or 0 (background), got {label!r}")
    checked_box: list[float] | None = None
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DemoRequestError(f"box must be [x0, y0, x1, y1] numbers, got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DemoRequestError(f"box {[x0, y0, x1, y1]} must satisfy 0 <= x0 < x1 <= {width} and "
                                   f"0 <= y0 < y1 <= {height}")
        checked_box = [x0, y0, x1, y1]
    if not checked and checked_box is None:
        raise DemoRequestError("no prompt: click a point or drag a box")
    return PromptSet(checked, [int(v) for v in labels], checked_box)


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer with hundreds of digits
        return False


def _best(scores: np.ndarray) -> int:
    """Index of the highest score; NaN (an empty mask's 0/0 stability) never wins, as in ``edgesam segment``."""
    return int(np.argmax(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-1.0)))


class DemoSession:
    """One model serving the demo page.

    Args:
        predictor: any :class:`~edgesam_core.inference.base.Predictor` (PyTorch, ONNX, TFLite, TensorRT).
        model_name: shown on the page (e.g. the variant or the checkpoint's file name).
        limits: upload and request limits.
        everything_options: :class:`SamAutomaticMaskGenerator` settings for "Everything"
            (default :data:`EVERYTHING_DEFAULTS`).

    Attributes:
        encode_count: image encodings so far (one per upload, plus re-encodes when switching images).
        decode_count: prompt decodings so far.
    """

    def __init__(self, predictor: Any, model_name: str | None = None, limits: DemoLimits | None = None,
                 everything_options: dict[str, Any] | None = None) -> None:
        self.predictor = predictor
        self.model_name = model_name or str(getattr(getattr(predictor, "model", None), "variant", "") or "model")
        self.limits = limits or DemoLimits()
        self.everything_options = dict(EVERYTHING_DEFAULTS if everything_options is None else everything_options)
        self.encode_count = 0
        self.decode_count = 0
        self._images: OrderedDict[str, _Stored] = OrderedDict()
        self._encoded_id: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, model: str | None = None, device: str = "cpu",
                        **kwargs: Any) -> DemoSession:
        """Open ``checkpoint`` (``.pth``/``.onnx``/``.tflite``/``.engine``/``.pte``) with ``load_predictor``."""
        from edgesam_core.inference.artifact_loader import load_predictor

        predictor = load_predictor(checkpoint, model=model, device=device)
        variant = getattr(getattr(predictor, "model", None), "variant", None)
        name = f"{variant} ({Path(checkpoint).name})" if variant else Path(checkpoint).name
        return cls(predictor, model_name=kwargs.pop("model_name", name), **kwargs)

    # -- capabilities -----------------------------------------------------------------------------------

    @property
    def is_hq(self) -> bool:
        """True when the model predicts HQ masks."""
        return bool(getattr(self.predictor, "is_hq", False))

    @property
    def can_compare_hq(self) -> bool:
        """True when the SAM token-0 mask can be shown next to the HQ mask (PyTorch HQ models only)."""
        from edgesam_core.inference.predictor import SamPredictor

        return self.is_hq and isinstance(self.predictor, SamPredictor)

    @property
    def can_segment_everything(self) -> bool:
        """True when the automatic mask generator can run (every backend with ``predict_torch``)."""
        return hasattr(self.predictor, "predict_torch")

    def info(self) -> dict[str, Any]:
        """What ``/api/info`` returns: model name, capabilities and limits."""
        return {
            "model": self.model_name,
            "is_hq": self.is_hq,
            "hq_toggle": self.can_compare_hq,
            "multimask": not self.is_hq,
            "everything": self.can_segment_everything,
            "tasks": sorted(getattr(self.predictor, "tasks", {}) or {}),
            "limits": asdict(self.limits),
        }

    # -- images -----------------------------------------------------------------------------------------

    def upload(self, data: bytes, name: str = "image") -> dict[str, Any]:
        """Decode, check and encode an uploaded image; it becomes the current image.

        Returns:
            ``{"image_id", "width", "height", "is_hq", "encode_ms", "preview"}``; ``preview`` is a JPEG data
            URL of the decoded image, which the page displays.

        Raises:
            DemoRequestError (and subclasses): too large, not an image, corrupt.
        """
        if len(data) > self.limits.max_upload_bytes:
            raise TooLargeError(f"Upload is {len(data):,} bytes; the limit is {self.limits.max_upload_bytes:,}")
        image = decode_image(data, self.limits.max_pixels)
        image_id = secrets.token_hex(8)
        with self._lock:
            encode_ms = self._encode(image_id, image)
            self._images[image_id] = _Stored(image, name)
            while len(self._images) > self.limits.max_images:
                self._images.popitem(last=False)
        return {"image_id": image_id, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "is_hq": self.is_hq, "encode_ms": round(encode_ms, 2), "preview": preview_data_url(image)}

    def _encode(self, image_id: str, image: np.ndarray) -> float:
        start = time.perf_counter()
        self._encoded_id = None  # stays None if encoding fails
        self.predictor.set_image(image)
        self._encoded_id = image_id
        self.encode_count += 1
        return (time.perf_counter() - start) * 1000.0

    def _get(self, image_id: Any) -> _Stored:
        if not isinstance(image_id, str) or image_id not in self._images:
            raise UnknownImageError(f"Unknown image id {image_id!r} (only the last {self.limits.max_images} "
                                    "uploads are kept): upload the image again")
        self._images.move_to_end(image_id)
        return self._images[image_id]

    def _ensure_encoded(self, image_id: str, stored: _Stored) -> float:
        return 0.0 if self._encoded_id == image_id else self._encode(image_id, stored.image)

    # -- prompts ----------------------------------------------------------------------------------------

    def segment(self, image_id: Any, points: Any = None, labels: Any = None, box: Any = None,
                multimask: bool = False, hq: bool = True) -> dict[str, Any]:
        """Predict masks for clicks and/or a box on an uploaded image (decoder only, unless another image
        was encoded meanwhile).

        Mask choice: HQ models return one mask, the HQ one (``hq=True``) or SAM's token-0 mask
        (``hq=False``, PyTorch only). Other models return the 3 multimask candidates with ``multimask``;
        without it, a box gives the single-mask output and points alone give the best of the 4 outputs by
        stability score (the rule of ``edgesam segment``).

        Returns:
            ``{"image_id", "masks": [mask_record...], "best", "mode", "decode_ms", "encode_ms", "total_ms"}``.
        """
        if not isinstance(multimask, bool) or not isinstance(hq, bool):
            raise DemoRequestError("'multimask' and 'hq' must be true or false")
        start = time.perf_counter()
        with self._lock:
            stored = self._get(image_id)
            height, width = stored.image.shape[:2]
            prompts = check_prompts(points, labels, box, width, height, self.limits.max_points)
            if self.is_hq and multimask:
                raise DemoRequestError("HQ models predict one mask per prompt: turn multimask off")
            if self.is_hq and not hq and not self.can_compare_hq:
                raise DemoRequestError("this backend returns only the HQ mask: the SAM mask needs a .pth checkpoint")
            encode_ms = self._ensure_encoded(image_id, stored)
            decode_start = time.perf_counter()
            masks, scores, ious, mode = self._predict(prompts, multimask, hq)
            decode_ms = (time.perf_counter() - decode_start) * 1000.0
            self.decode_count += 1
        records = [mask_record(m, s, i) for m, s, i in zip(masks, scores, ious)]
        return {
            "image_id": image_id,
            "masks": records,
            "best": _best(scores) if len(scores) else 0,
            "mode": mode,
            "prompts": {"points": prompts.points, "labels": prompts.labels, "box": prompts.box},
            "decode_ms": round(decode_ms, 2),
            "encode_ms": round(encode_ms, 2),
            "total_ms": round((time.perf_counter() - start) * 1000.0, 2),
        }

    def _predict(self, prompts: PromptSet, multimask: bool,
                 hq: bool) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, str]:
        from edgesam_core.inference.amg import stability_score_numpy

        coords, labels, box = prompts.as_arrays()
        kwargs: dict[str, Any] = {"point_coords": coords, "point_labels": labels, "box": box}
        if self.is_hq:
            if hq:
                result = self.predictor.predict(**kwargs)
                return [result.masks[0]], stability_score_numpy(result.low_res_logits), result.scores, "hq"
            result = self.predictor.predict(**kwargs, return_sam_masks=True)
            return [result.sam_masks[0]], stability_score_numpy(result.low_res_sam_logits), result.scores, "sam"
        if multimask:
            result = self.predictor.predict(**kwargs, num_multimask_outputs=3)
            return list(result.masks), stability_score_numpy(result.low_res_logits), result.scores, "multimask"
        if box is not None:
            result = self.predictor.predict(**kwargs, num_multimask_outputs=1)
            return [result.masks[0]], stability_score_numpy(result.low_res_logits), result.scores, "single"
        # The predictor picks the most stable of the 4 on the low-res logits and upscales only that one.
        result = self.predictor.predict(**kwargs, num_multimask_outputs=4, best_only=True)
        return [result.masks[0]], stability_score_numpy(result.low_res_logits), result.scores, "best-of-4"

    # -- everything -------------------------------------------------------------------------------------

    def task(self, image_id: Any, name: Any) -> dict[str, Any]:
        """The mask of a learned task prompt (``edgesam demo --tasks FILE``) on an uploaded image, no click.

        Returns:
            the :meth:`segment` answer with one mask and ``mode`` ``"task"``.
        """
        from edgesam_core.inference.amg import stability_score_numpy

        tasks = getattr(self.predictor, "tasks", {}) or {}
        if not isinstance(name, str) or name not in tasks:
            known = ", ".join(sorted(tasks)) or "none (start the demo with --tasks FILE)"
            raise DemoRequestError(f"Unknown task {str(name)[:40]!r}; tasks: {known}")
        start = time.perf_counter()
        with self._lock:
            stored = self._get(image_id)
            encode_ms = self._ensure_encoded(image_id, stored)
            decode_start = time.perf_counter()
            result = self.predictor.predict_task(name)
            decode_ms = (time.perf_counter() - decode_start) * 1000.0
            self.decode_count += 1
        stability = stability_score_numpy(result.low_res_logits)
        return {"image_id": image_id, "masks": [mask_record(result.masks[0], stability[0], result.scores[0])],
                "best": 0, "mode": "task", "prompts": {"points": [], "labels": [], "box": None, "task": name},
                "decode_ms": round(decode_ms, 2), "encode_ms": round(encode_ms, 2),
                "total_ms": round((time.perf_counter() - start) * 1000.0, 2)}

    def everything(self, image_id: Any) -> dict[str, Any]:
        """Segment the whole image with the automatic mask generator.

        Returns:
            ``{"image_id", "count", "overlay" (RGBA PNG data URL, one colour per mask), "masks": [{"area",
            "bbox", "score", "predicted_iou", "rle", "point"}], "ms"}``, largest masks first.
        """
        from edgesam_core.inference.amg import encode_binary_mask
        from edgesam_core.inference.segment_job import predict_everything

        if not self.can_segment_everything:
            raise DemoRequestError("'Everything' needs a predictor with predict_torch; this backend takes prompts only")
        start = time.perf_counter()
        with self._lock:
            stored = self._get(image_id)
            try:
                results = predict_everything(self.predictor, stored.image, **self.everything_options)
            finally:
                # The generator encodes the image itself and then forgets it: re-encode on the next click.
                self._encoded_id = None
                self.encode_count += 1
        height, width = stored.image.shape[:2]
        masks = [r.mask for r in results]
        overlay = colour_overlay(masks) if masks else np.zeros((height, width, 4), dtype=np.uint8)
        records = [{
            "area": int(np.count_nonzero(r.mask)),
            "bbox": mask_bbox_xywh(r.mask),
            "score": float(np.nan_to_num(r.score)),
            "predicted_iou": float(np.nan_to_num(r.predicted_iou)),
            "point": [float(v) for v in r.prompt.get("point", [])],
            "rle": encode_binary_mask(r.mask),
        } for r in results]
        return {"image_id": image_id, "count": len(records), "overlay": data_url(png_bytes(overlay)),
                "masks": records, "ms": round((time.perf_counter() - start) * 1000.0, 2)}

