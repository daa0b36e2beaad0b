"""The ``SamPredictor`` API over exported graphs, whatever runtime runs them (see :class:`ExportedSamPredictor`).

Pre- and post-processing are the PyTorch predictor's: PIL-bilinear resize of the longest side,
normalisation with SAM's pixel statistics and zero padding in numpy; logits upscaled with torch's bilinear
kernel (align_corners=False) to the model input, cropped to the resized image and resized to the original
size, so masks equal PyTorch's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.data.transforms import ResizeLongestSide
from edgesam_core.errors import InputError
from edgesam_core.inference.base import Prediction

#: SAM's RGB pixel statistics on the 0-255 scale (identical for every variant).
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
MASK_THRESHOLD = 0.0
_MASK_SLICES = {1: slice(0, 1), 3: slice(1, 4), 4: slice(0, 4)}


def preprocess(image: np.ndarray, img_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 ``HxWx3`` -> normalised, zero-padded ``1x3xSxS`` float32 and the resized ``(h, w)``."""
    resized = ResizeLongestSide(img_size).apply_image(np.ascontiguousarray(image))
    h, w = resized.shape[:2]
    x = np.zeros((1, 3, img_size, img_size), np.float32)
    x[0, :, :h, :w] = ((resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return x, (h, w)


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # PyTorch's bilinear, align_corners=False: half-pixel centres, negative sources clamped to 0. The source
    # positions are computed in float32 as torch does for float tensors, so a weight that torch rounds to
    # exactly 0 (or not) is 0 here too; thresholded resizes (masks > 0) then agree pixel for pixel.
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    return i0, i1, frac


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of ``...xHxW`` float arrays, numerically PyTorch's ``align_corners=False``."""
    y0, y1, fy = _axis_weights(x.shape[-2], out_h)
    x0, x1, fx = _axis_weights(x.shape[-1], out_w)
    rows = x[..., y0, :] * (1.0 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return (rows[..., x0] * (1.0 - fx) + rows[..., x1] * fx).astype(np.float32)


#: The upstream decoder contract's inputs, as the predictor fills them (HQ features added per graph).
CONTRACT_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "boxes", "point_valid", "boxes_valid")

#: File suffixes of the staged decoder's two graphs (after ``X_decoder``).
STAGES = ("image", "prompts")


def pack_prompts(coords: np.ndarray | None, labels: np.ndarray | None,
                 boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """B prompt sets as the staged decoder's ``point_coords`` [B, P, 2] / ``point_labels`` [B, P].

    What SAM's prompt encoder embeds, in its order: the points, then the padding point (label -1) when there
    is no box, then the box's corners as points labelled 2 and 3. ``coords`` [B, N, 2], ``labels`` [B, N] and
    ``boxes`` [B, 4] are in the model-input frame; a single box or point set is shared by every row.
    """
    rows = max(len(t) for t in (coords, labels, boxes) if t is not None)
    parts_c, parts_l = [], []
    if coords is not None:
        parts_c.append(np.broadcast_to(np.asarray(coords, np.float32), (rows, *np.shape(coords)[1:])))
        parts_l.append(np.broadcast_to(np.asarray(labels, np.float32), (rows, np.shape(labels)[1])))
    if boxes is None:
        parts_c.append(np.zeros((rows, 1, 2), np.float32))
        parts_l.append(np.full((rows, 1), -1.0, np.float32))
    else:
        corners = np.asarray(boxes, np.float32).reshape(-1, 2, 2)
        parts_c.append(np.broadcast_to(corners, (rows, 2, 2)))
        parts_l.append(np.broadcast_to(np.array([[2.0, 3.0]], np.float32), (rows, 2)))
    return np.ascontiguousarray(np.concatenate(parts_c, 1)), np.ascontiguousarray(np.concatenate(parts_l, 1))


def pack_contract_feed(feed: dict[str, np.ndarray], max_points: int | None = None,
                       graph: str = "the decoder") -> dict[str, np.ndarray]:
    """An upstream-contract decoder feed (flags, box) -> packed ``point_coords`` / ``point_labels`` (see
    :func:`pack_prompts`), for graphs with SAM's packed prompt and a dynamic point count (ExecuTorch, Core ML).

    Raises:
        InputError: neither a point nor a box, or more than ``max_points`` packed points.
    """
    has_points = bool(np.asarray(feed["point_valid"]).reshape(-1)[0])
    has_box = bool(np.asarray(feed.get("boxes_valid", False)).reshape(-1)[0])
    if not (has_points or has_box):
        raise InputError(f"{graph} needs a point or a box")
    coords, labels = pack_prompts(
        np.asarray(feed["point_coords"], np.float32).reshape(1, -1, 2) if has_points else None,
        np.asarray(feed["point_labels"], np.float32).reshape(1, -1) if has_points else None,
        np.asarray(feed["boxes"], np.float32).reshape(1, 4) if has_box else None)
    if max_points is not None and coords.shape[1] > max_points:
        raise InputError(f"this prompt needs {coords.shape[1]} points (a box counts as 2, no box adds a padding "
                         f"point) but {graph} takes at most {max_points}; export again with --max-points "
                         f"{coords.shape[1]} or more")
    packed = {k: v for k, v in feed.items() if k not in ("boxes", "point_valid", "boxes_valid")}
    packed.update(point_coords=coords, point_labels=labels)
    return packed


def postprocess_masks(low_res: np.ndarray, img_size: int, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> np.ndarray:
    """Logits ``Cxhxw`` -> ``CxHxW`` in the original frame (as ``Sam.postprocess_masks``).

    Uses torch's bilinear kernel (torch is a core dependency): the masks are PyTorch's bit for bit, and it
    is about 3x faster than the numpy twin, which matters for the per-click latency of the ONNX backends.
    """
    import torch

    from edgesam_core.models.sam import resize_mask_logits

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(low_res, dtype=np.float32))[None]
        return resize_mask_logits(x, img_size, input_size, original_size)[0].numpy()


def postprocess_binary_masks(low_res: np.ndarray, img_size: int, input_size: tuple[int, int],
                             original_size: tuple[int, int], threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """``postprocess_masks(...) > threshold`` (``edgesam_core.models.mask_resize.mask_logits_above``)."""
    import torch

    from edgesam_core.models.mask_resize import mask_logits_above

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(low_res, dtype=np.float32))[None]
        return mask_logits_above(x, img_size, input_size, original_size, threshold)[0].numpy()


class ExportedSamPredictor:
    """The ``SamPredictor`` API over an exported model's runners (ONNX Runtime, LiteRT, TensorRT).

    A *runner* has ``run(output_names, feed) -> [arrays]``, ``get_inputs()`` and ``get_outputs()`` (items with
    ``.name``) in ONNX names and layouts, as an onnxruntime session does; runners with a static prompt layout
    add ``prepare_feed``. One runner per graph: ``encoder`` (``image`` -> embeddings), ``decoder`` (the
    upstream-contract decoder) and optionally ``staged`` = (per-image stage, prompt-batch stage). Everything
    else (pre/post-processing, prompt handling, batching) is here, once, for every runtime.

    The exported decoders have no mask input, so ``mask_input`` is rejected; HQ graphs return only the HQ
    mask, so ``return_sam_masks`` is rejected too.
    """

    def __init__(self, encoder: Any, decoder: Any, img_size: int, is_hq: bool, packs_prompts: bool = False,
                 staged: tuple[Any, Any] | None = None,
                 paths: tuple[Path | None, Path | None] = (None, None)) -> None:
        self.encoder_path, self.decoder_path = paths
        self.encoder, self.decoder = encoder, decoder
        self.img_size, self.is_hq = int(img_size), bool(is_hq)
        #: Keys of the decoder feed the runner takes: a runner with its own prompt layout (``packs_prompts``,
        #: e.g. LiteRT's static or ExecuTorch's packed points) takes the whole contract feed and packs it.
        self._decoder_inputs = {t.name for t in decoder.get_inputs()}
        if packs_prompts:
            self._decoder_inputs |= set(CONTRACT_DECODER_INPUTS)
        #: The staged decoder's runners (per image, per prompt batch), when the runtime has them.
        self.staged = staged
        self.transform = ResizeLongestSide(self.img_size)
        self.stability_score_offset = 1.0
        self.mask_threshold = MASK_THRESHOLD
        self.reset_image()

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: list[np.ndarray] | None = None
        self.context: list[np.ndarray] | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an ``HxWx3`` uint8 image (``image_format`` ``"RGB"`` or ``"BGR"``)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"set_image expects an HxWx3 uint8 array, got {getattr(image, 'dtype', type(image))} "
                             f"with shape {getattr(image, 'shape', None)}")
        if image_format == "BGR":
            image = image[..., ::-1]
        self.reset_image()
        x, self.input_size = preprocess(image, self.img_size)
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.features = self.encoder.run(None, {self.encoder.get_inputs()[0].name: x})
        if self.staged:
            self.context = self.staged[0].run(None, {"image_embeddings": self.features[0]})
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The ``1x256xgxg`` image embedding of the current image."""
        self._require_image()
        return self.features[0]

    def _decoder_output_names(self) -> list[str]:
        """``scores`` and ``masks``, by name: the published EdgeSAM-DyT HQ decoder (upstream's dev/onnx
        export) has a third output, ``masks_sam``, after them. Works for every runner the subclasses use."""
        names = [o.name for o in self.decoder.get_outputs()]
        return ["scores", "masks"] if {"scores", "masks"} <= set(names) else names[:2]

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise InputError("No image set: call set_image(image) before predicting.")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        num_multimask_outputs: int | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        use_stability_score: bool = False,
        return_sam_masks: bool = False,
        best_only: bool = False,
    ) -> Prediction:
        """Predict masks for one prompt set; arguments and result as ``SamPredictor.predict``.

        Raises:
            InputError: no image set, or an option the ONNX graphs do not provide (mask_input,
                return_sam_masks). ValueError: malformed prompts.
        """
        from edgesam_core.inference.predictor import _check_points, resolve_num_outputs

        self._require_image()
        self._reject_unsupported(mask_input, return_sam_masks)
        num_outputs = resolve_num_outputs(num_multimask_outputs, multimask_output)
        coords = labels = box_in = None
        if point_coords is not None or point_labels is not None:
            coords, labels = _check_points(point_coords, point_labels)
            coords = self.transform.apply_coords(coords, self.original_size)
        if box is not None:
            box_arr = np.asarray(box, dtype=np.float64)
            if box_arr.size != 4 or not np.all(np.isfinite(box_arr)):
                raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1; got shape {box_arr.shape}")
            box_in = self.transform.apply_boxes(box_arr.reshape(1, 4), self.original_size).reshape(4)
        scores, logits, low_res = self._decode(coords, labels, box_in, num_outputs)
        if use_stability_score or best_only:
            from edgesam_core.inference.amg import stability_score_numpy

            stability = stability_score_numpy(low_res, self.mask_threshold, self.stability_score_offset)
            if use_stability_score:
                scores = stability
            if best_only and len(scores) > 1:
                keep = int(np.argmax(np.nan_to_num(stability, nan=-1.0)))
                scores, logits, low_res = scores[keep:keep + 1], logits[keep:keep + 1], low_res[keep:keep + 1]
        if return_logits:
            masks = postprocess_masks(logits, self.img_size, self.input_size, self.original_size)
        else:
            masks = postprocess_binary_masks(logits, self.img_size, self.input_size, self.original_size,
                                             self.mask_threshold)
        return Prediction(masks, scores, low_res)

    def predict_torch(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        num_multimask_outputs: int | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        use_stability_score: bool = False,
        return_sam_masks: bool = False,
    ) -> tuple[Any, ...]:
        """``SamPredictor.predict_torch`` for exported graphs: B prompt sets already in the model-input frame.

        The staged decoder takes ``prompt_batch`` prompt sets per call, the contract decoder one; the results
        are torch tensors ``(masks BxCxHxW, scores BxC, low_res_logits BxCxhxw)``. This is what lets the
        automatic mask generator ("segment everything") run on ONNX, TFLite and TensorRT models.
        """
        from edgesam_core.inference.amg import calculate_stability_score
        from edgesam_core.inference.predictor import resolve_num_outputs

        self._require_image()
        self._reject_unsupported(mask_input, return_sam_masks)
        num_outputs = resolve_num_outputs(num_multimask_outputs, multimask_output)
        if point_coords is None and boxes is None:
            raise ValueError("predict_torch needs point_coords (BxNx2) or boxes (Bx4)")
        scores, low_res, logits = self._decode_rows(point_coords, point_labels, boxes, num_outputs)
        if use_stability_score:
            scores = calculate_stability_score(low_res, self.mask_threshold, self.stability_score_offset)
        masks = self.upscale_masks(logits)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, scores, low_res

    #: Prompt sets per staged-decoder call (the graph takes any batch): on CPUs one per call is fastest, as
    #: each prompt's 4096 x 256 image tokens leave the cache in bigger batches (measured per prompt on 2
    #: cores: 1 -> 11.5 ms, 8 -> 14.7 ms, 64 -> 13.3 ms); raise it for GPUs.
    prompt_batch = 1

    @property
    def prompts_per_call(self) -> int:
        """Prompt sets per decoder call when many are decoded: ``prompt_batch`` on a staged decoder, else 1."""
        return self.prompt_batch if self.staged else 1

    def _decode_rows(self, coords: Any, labels: Any, boxes: Any, num_outputs: int) -> tuple[Any, Any, Any]:
        """Rows of torch prompts (model-input frame) -> torch ``(scores, low_res, logits)``.

        The staged decoder takes ``prompt_batch`` rows per call, the contract decoder one; ``logits`` are what
        the graph returned (input-size for ``--upsample`` exports, else ``low_res`` itself).
        """
        import torch

        rows = (coords if coords is not None else boxes).shape[0]
        step = self.prompts_per_call

        def part(t: Any, start: int) -> np.ndarray | None:
            return None if t is None else t[start:start + step].detach().cpu().numpy()

        sl = _MASK_SLICES[num_outputs]
        scores, low_res, logits = [], [], []
        for start in range(0, rows, step):
            if self.staged:
                s, m = self._decode_batch(part(coords, start), part(labels, start), part(boxes, start))
                scores.append(s[:, sl])
                low_res.append(m[:, sl])
                logits.append(m[:, sl])
            else:
                one = [None if t is None else t[0].astype(np.float64)
                       for t in (part(coords, start), part(labels, start), part(boxes, start))]
                s, g, m = self._decode(*one, num_outputs)
                scores.append(s[None])
                low_res.append(m[None])
                logits.append(g[None])
        return tuple(torch.from_numpy(np.concatenate(t).astype(np.float32)) for t in (scores, low_res, logits))

    def predict_low_res_torch(self, point_coords: Any, point_labels: Any, num_multimask_outputs: int,
                              use_stability_score: bool, boxes: Any = None) -> tuple[Any, Any]:
        """B prompt sets (model-input frame: points with labels, and/or ``Bx4`` boxes) -> ``(scores BxC,
        low_res BxCxhxw)``, without upscaling."""
        from edgesam_core.inference.amg import calculate_stability_score

        self._require_image()
        scores, low_res, _ = self._decode_rows(point_coords, point_labels, boxes, num_multimask_outputs)
        if use_stability_score:
            scores = calculate_stability_score(low_res, self.mask_threshold, self.stability_score_offset)
        return scores, low_res

    def upscale_masks(self, logits: Any) -> Any:
        """Logits ``BxCxhxw`` (torch; low-res or input-size) -> logits in the original image frame."""
        import torch

        if not len(logits):
            return torch.zeros((0, logits.shape[1], *self.original_size))
        return torch.stack([torch.from_numpy(postprocess_masks(m.numpy(), self.img_size, self.input_size,
                                                                self.original_size)) for m in logits])

    @staticmethod
    def _reject_unsupported(mask_input: Any, return_sam_masks: bool) -> None:
        if mask_input is not None:
            raise InputError("The ONNX decoder has no mask input: drop mask_input or use the PyTorch checkpoint")
        if return_sam_masks:
            raise InputError("ONNX HQ decoders return only the HQ mask: drop return_sam_masks or use the checkpoint")

    def _decode(self, coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None,
                num_outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder run on prompts already in the model-input frame: ``(scores C, logits C, low_res C)``.

        ``logits`` is what the graph returned (low-res, or input-size with ``--upsample``); ``low_res`` is
        always the ``4*grid`` square grid.
        """
        if self.staged:
            scores, logits = self._decode_batch(None if coords is None else np.asarray(coords)[None],
                                                None if labels is None else np.asarray(labels)[None],
                                                None if box is None else np.asarray(box).reshape(1, 4))
            sl = _MASK_SLICES[num_outputs]
            low_res = logits[0, sl].astype(np.float32)
            return scores[0, sl].astype(np.float32), low_res, low_res
        feed: dict[str, np.ndarray] = {"image_embeddings": self.features[0]}
        if coords is not None:
            feed["point_coords"] = np.asarray(coords, np.float32).reshape(1, -1, 2)
            feed["point_labels"] = np.asarray(labels, np.float32).reshape(1, -1)
            feed["point_valid"] = np.ones((1, 1), bool)
        else:
            feed["point_coords"] = np.zeros((1, 1, 2), np.float32)
            feed["point_labels"] = -np.ones((1, 1), np.float32)
            feed["point_valid"] = np.zeros((1, 1), bool)
        feed["boxes"] = (np.zeros(4, np.float32) if box is None else np.asarray(box, np.float32)).reshape(1, 1, 4)
        feed["boxes_valid"] = np.array([[box is not None]])
        for i, arr in enumerate(self.features[1:]):
            feed[f"interm_embeddings_{i}"] = arr
        scores, logits = self.decoder.run(self._decoder_output_names(),
                                          {k: v for k, v in feed.items() if k in self._decoder_inputs})
        if not self.is_hq:
            sl = _MASK_SLICES[num_outputs]
            scores, logits = scores[:, sl], logits[:, sl]
        scores, logits = scores[0].astype(np.float32), logits[0].astype(np.float32)
        low_res_side = 4 * int(self.features[0].shape[-1])
        # Graphs exported with --upsample return SxS logits; bring them back to the low-res grid.
        low_res = logits if logits.shape[-1] == low_res_side else resize_bilinear(logits, low_res_side, low_res_side)
        return scores, logits, low_res

    def _decode_batch(self, coords: np.ndarray | None, labels: np.ndarray | None,
                      boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """B prompt sets through the staged decoder in one call: ``scores`` [B, 4], low-res ``logits``."""
        point_coords, point_labels = pack_prompts(coords, labels, boxes)
        session = self.staged[1]
        names = [i.name for i in session.get_inputs()]
        return session.run(["scores", "masks"], dict(zip(names, [*self.context, point_coords, point_labels])))
