"""``SamPredictor``: encode an image once, then predict masks for any number of prompts.

Numerics follow upstream EdgeSAM (``edge_sam/predictor.py``): resize the longest side to the model input
size with PIL bilinear, ``Sam.preprocess`` (normalise, zero-pad), encode; prompts are scaled into the
resized frame; low-resolution logits are upscaled by ``Sam.postprocess_masks`` and thresholded at 0.

Differences from upstream, on purpose:
- ``features`` is not the first positional parameter of ``predict``; the stored embedding is always used.
- ``predict`` returns three values (a :class:`~edgesam_core.inference.base.Prediction`), four with
  ``return_sam_masks=True`` on an HQ model, instead of upstream's five with two Nones.
- ``predict_torch`` defaults to ``use_stability_score=False`` like ``predict`` (upstream defaults to True
  there, which silently replaces the IoU predictions); the automatic mask generator asks explicitly.
- SAM's boolean ``multimask_output`` is accepted next to EdgeSAM's ``num_multimask_outputs``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgesam_core.data.transforms import ResizeLongestSide
from edgesam_core.errors import InputError
from edgesam_core.inference.amg import calculate_stability_score
from edgesam_core.inference.base import Prediction

#: Labels the prompt encoder understands: -2 ignore, -1 padding, 0 negative, 1 positive, 2/3 box corners.
VALID_LABELS = frozenset({-2, -1, 0, 1, 2, 3})
#: ``num_multimask_outputs`` -> mask tokens used: 1 -> token 0, 3 -> tokens 1-3, 4 -> tokens 0-3.
MULTIMASK_CHOICES = (1, 3, 4)


def resolve_num_outputs(num_multimask_outputs: int | None, multimask_output: bool | None) -> int:
    """Combine EdgeSAM's ``num_multimask_outputs`` and SAM's ``multimask_output`` into one count.

    ``multimask_output=True`` means 3 masks and ``False`` means 1; with neither given the count is 3.

    Raises:
        ValueError: an unsupported count, or both arguments given and disagreeing.
    """
    if num_multimask_outputs is not None and num_multimask_outputs not in MULTIMASK_CHOICES:
        raise ValueError(f"num_multimask_outputs must be one of {MULTIMASK_CHOICES}, got {num_multimask_outputs!r}")
    if multimask_output is None:
        return 3 if num_multimask_outputs is None else int(num_multimask_outputs)
    implied = 3 if multimask_output else 1
    if num_multimask_outputs is not None and num_multimask_outputs != implied:
        raise ValueError(
            f"multimask_output={multimask_output} asks for {implied} mask(s) but num_multimask_outputs="
            f"{num_multimask_outputs}; pass only one of them"
        )
    return implied


class SamPredictor:
    """SAM-style predictor for any ``Sam`` built by :func:`edgesam_core.models.build_sam`.

    Args:
        model: an eval-mode ``Sam`` (EdgeSAM, EdgeSAM-DyT, HQ or a SAM ViT teacher).

    Example::

        predictor = SamPredictor(build_sam("edge_sam_dyt", "edge_sam_dyt.pth"))
        predictor.set_image(rgb)                      # HxWx3 uint8
        masks, scores, logits = predictor.predict(point_coords=np.array([[500, 375]]),
                                                  point_labels=np.array([1]))
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.transform = ResizeLongestSide(int(model.img_size))
        #: Offset used for stability scores (upstream's value).
        self.stability_score_offset = 1.0
        #: Feed the encoder channels-last tensors (set by :meth:`to_inference_form` on CPUs).
        self.channels_last = False
        #: Prompt sets per decoder call in :meth:`predict_low_res_torch` and ``evaluate`` (None: 64 on CUDA, 1 on
        #: CPUs, where each prompt's 4096 x 256 image tokens fall out of cache in bigger batches: measured per
        #: prompt on 2 cores, 21.8 ms at 1, 26.7 ms at 4, 69 ms at 16).
        self.prompt_batch: int | None = None
        #: Fingerprint of the prompt encoder + mask decoder weights as loaded (task prompts are tied to it); taken
        #: before :meth:`to_inference_form` rewrites them.
        self._prompt_fingerprint: str | None = None
        #: Learned task prompts by name (:meth:`load_tasks`), for :meth:`predict_task`.
        self.tasks: dict[str, torch.Tensor] = {}
        self.reset_image()

    def to_inference_form(self, channels_last: bool | None = None) -> dict[str, int]:
        """Rewrite the model in place into its faster, numerically equivalent inference form.

        BatchNorms and RepVGG branches folded, neck convs and DyT alphas folded, decoder deconvolutions as
        1x1 conv + pixel shuffle (see :mod:`edgesam_core.models.inference_form`), and the encoder in
        channels-last memory (default: on CPUs, where oneDNN runs it ~1.5x faster). The model's state dict no
        longer matches checkpoints afterwards: call this after loading weights, never on a model you train.
        """
        from edgesam_core.models.inference_form import to_inference_form
        from edgesam_core.models.task_prompt import prompt_path_fingerprint

        if self._prompt_fingerprint is None:
            self._prompt_fingerprint = prompt_path_fingerprint(self.model)
        done = to_inference_form(self.model)
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        if channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        self.channels_last = bool(channels_last)
        self.reset_image()
        return done

    # -- properties ------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the model (its pixel-mean buffer)."""
        return self.model.pixel_mean.device

    @property
    def prompts_per_call(self) -> int:
        """Prompt sets per decoder call when many are decoded (``prompt_batch``, else 64 on CUDA, 1 on CPUs)."""
        return self.prompt_batch or (64 if self.device.type == "cuda" else 1)

    @property
    def mask_threshold(self) -> float:
        """Logit threshold of a mask pixel (the model's, 0.0)."""
        return float(self.model.mask_threshold)

    @property
    def is_hq(self) -> bool:
        """True for HQ models, which predict one HQ mask per prompt."""
        return bool(getattr(self.model, "is_hq", False))

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits (256 for full-size models): 4x the embedding grid."""
        if self.is_image_set:
            return 4 * int(self.get_image_embedding().shape[-1])
        return 4 * int(self.model.prompt_encoder.image_embedding_size[0])

    # -- image -----------------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an image for later ``predict`` calls.

        Args:
            image: ``HxWx3`` uint8 array.
            image_format: ``"RGB"`` or ``"BGR"`` (channels are flipped to the model's format).

        Raises:
            ValueError: wrong dtype, shape or format.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"set_image expects an HxWx3 uint8 array, got {dtype} with shape {shape}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"set_image got an empty image of shape {image.shape}")
        if image_format != getattr(self.model, "image_format", "RGB"):
            image = image[..., ::-1]
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, (int(image.shape[0]), int(image.shape[1])))

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]) -> None:
        """Encode an image already resized with :class:`ResizeLongestSide`.

        Args:
            transformed_image: ``1x3xhxw`` tensor (0-255 values) whose longest side equals ``model.img_size``.
            original_image_size: ``(H, W)`` before resizing.
        """
        img_size = int(self.model.img_size)
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != img_size:
            raise ValueError(f"set_torch_image expects 1x3xHxW with long side {img_size}, got {shape}")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(shape[2]), int(shape[3]))
        pixels = self.model.preprocess(transformed_image.to(self.device).float())
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            features = self.model.encode_image(pixels)
            self.features = (features[0].contiguous(), tuple(t.contiguous() for t in features[1])) \
                if isinstance(features, tuple) else features.contiguous()
        else:
            self.features = self.model.encode_image(pixels)
        # The dense positional encoding depends only on the model: computed once per image, not per click.
        self.dense_pe = self.model.prompt_encoder.get_dense_pe()
        self.is_image_set = True

    def _image_context(self) -> Any:
        """The decoder's per-image work for prompts without a mask input, computed on first use per image."""
        if self.decoder_context is None and hasattr(self.model.mask_decoder, "image_context"):
            features = self.features[0] if isinstance(self.features, tuple) else self.features
            _, no_mask = self.model.prompt_encoder(points=None, boxes=None, masks=None)
            self.decoder_context = self.model.mask_decoder.image_context(features, self.dense_pe, no_mask)
        return self.decoder_context

    def get_image_embedding(self) -> torch.Tensor:
        """The ``1x256xgridxgrid`` embedding of the current image (for HQ models without the side features)."""
        self._require_image()
        return self.features[0] if isinstance(self.features, tuple) else self.features

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: Any = None
        self.dense_pe: torch.Tensor | None = None
        self.decoder_context: Any = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise InputError("No image set: call set_image(image) before predicting.")

    # -- prediction ------------------------------------------------------------------------------------

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
        """Predict masks for one set of prompts on the current image.

        Args:
            point_coords: ``Nx2`` xy points in original-image pixels.
            point_labels: ``N`` labels: 1 foreground, 0 background (-1 padding, -2 ignore also accepted).
            box: ``4`` or ``1x4`` xyxy box in original-image pixels.
            mask_input: ``1x256x256`` low-resolution logits from a previous call.
            num_multimask_outputs: 1 (token 0), 3 (tokens 1-3, default) or 4 (tokens 0-3); ignored by HQ
                models, which always return their one HQ mask.
            multimask_output: SAM's flag: True = 3 masks, False = 1; must agree with
                ``num_multimask_outputs`` when both are given.
            return_logits: return float32 logits instead of bool masks.
            use_stability_score: replace the predicted IoUs by stability scores of the low-res logits
                (offset 1.0, threshold ``model.mask_threshold``). EdgeSAM's IoU head was not distilled,
                so upstream recommends stability scores to rank masks.
            return_sam_masks: HQ models only: also return SAM's token-0 mask as a fourth element.
            best_only: keep only the candidate with the highest stability score of its low-res logits
                (NaN, an empty mask, never wins) and upscale only that one (C = 1): EdgeSAM's click rule,
                without paying for the upscaling of the others.

        Returns:
            :class:`Prediction` ``(masks CxHxW, scores C float32, low_res_logits Cx256x256 float32)``.

        Raises:
            InputError: no image set. ValueError: malformed prompts.
        """
        self._require_image()
        if return_sam_masks and not self.is_hq:
            raise ValueError("return_sam_masks needs an HQ model (e.g. edge_sam_dyt_hq)")
        assert self.original_size is not None  # set with the image (internal invariant)
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            coords, labels = _check_points(point_coords, point_labels)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box_arr = np.asarray(box, dtype=np.float64)
            if box_arr.size != 4 or not np.all(np.isfinite(box_arr)):
                raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1; got shape {box_arr.shape}")
            box_t = torch.as_tensor(self.transform.apply_boxes(box_arr.reshape(1, 4), self.original_size),
                                    dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_arr = np.asarray(mask_input, dtype=np.float32)
            side = self.low_res_size
            if mask_arr.shape != (1, side, side):
                raise ValueError(f"mask_input must have shape 1x{side}x{side}, got {mask_arr.shape}")
            mask_t = torch.as_tensor(mask_arr, device=self.device)[None]

        out = self._run(coords_t, labels_t, box_t, mask_t, resolve_num_outputs(num_multimask_outputs, multimask_output),
                        return_logits, use_stability_score, want_sam=return_sam_masks, best_only=best_only)
        masks, scores, low_res, sam_masks, low_res_sam = out

        def to_np(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t[0].detach().cpu().numpy()

        return Prediction(to_np(masks), to_np(scores).astype(np.float32), to_np(low_res).astype(np.float32),
                          to_np(sam_masks), to_np(low_res_sam), include_sam_masks=return_sam_masks)

    def load_tasks(self, path: Any) -> list[str]:
        """Read the task prompts of a tasks file (``edgesam finetune --train prompt``) for :meth:`predict_task`.

        Raises:
            InputError: not a tasks file, no task in it, or tasks trained with other decoder weights.
        """
        from edgesam_core.errors import InputError
        from edgesam_core.models.task_prompt import TaskPrompt, load_task_file, prompt_path_fingerprint

        try:
            tasks = load_task_file(path)
        except ValueError as exc:
            raise InputError(f"{exc}; train a task with 'edgesam finetune --train prompt --task NAME'") from exc
        if not tasks:
            raise InputError(f"No tasks file at {path}: train one with 'edgesam finetune --train prompt --task NAME' "
                             "or pass --tasks FILE")
        mine = self._prompt_fingerprint or prompt_path_fingerprint(self.model)
        foreign = sorted(n for n, t in tasks.items() if t.get("fingerprint") != mine)
        if foreign:
            raise InputError(f"{path}: task(s) {', '.join(foreign)} were trained for other decoder weights than this "
                             "checkpoint's; use the checkpoint they were trained on, or train them again")
        try:
            self.tasks = {name: TaskPrompt.from_entry(t).to(self.device) for name, t in tasks.items()}
        except ValueError as exc:
            raise InputError(f"{path}: {exc}; train the task again with 'edgesam finetune --train prompt'") from exc
        return sorted(self.tasks)

    @torch.no_grad()
    def predict_task(self, name: str, return_logits: bool = False) -> Prediction:
        """The mask of a learned task prompt on the current image, with no click: ``(masks 1xHxW, scores 1,
        low_res_logits 1xhxw)``.

        Raises:
            InputError: no image set, or ``name`` is not a loaded task (see :meth:`load_tasks`).
        """
        from edgesam_core.errors import InputError
        from edgesam_core.models.task_prompt import decode_task

        self._require_image()
        tasks = self.tasks
        if name not in tasks:
            raise InputError(f"No task {name!r}" + (f"; the tasks file has {', '.join(sorted(tasks))}" if tasks else
                                                    ": load a tasks file first (--tasks FILE)"))
        features = self.features[0] if isinstance(self.features, tuple) else self.features
        low_res, iou = decode_task(self.model, features, tasks[name])
        postprocess = self.model.postprocess_masks if return_logits else self.model.postprocess_binary_masks
        masks = postprocess(low_res, self.input_size, self.original_size)
        return Prediction(masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy())

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        use_stability_score: bool = False,
        return_sam_masks: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Predict masks for a batch of B prompt sets, already in the resized (model input) frame.

        Row ``b`` of every given input belongs to prompt set ``b``; the image embedding is shared.

        Args:
            point_coords: ``BxNx2`` float xy points, transformed with ``transform.apply_coords_torch``.
            point_labels: ``BxN`` int labels.
            boxes: ``Bx4`` xyxy boxes, transformed with ``transform.apply_boxes_torch``.
            mask_input: ``Bx1x256x256`` logits.
            num_multimask_outputs, multimask_output, return_logits: as in :meth:`predict`.
            use_stability_score: as in :meth:`predict`; **False by default** (upstream defaults to True here).
            return_sam_masks: HQ models only: also return the token-0 SAM masks as a fourth tensor.

        Returns:
            ``(masks BxCxHxW, scores BxC, low_res_logits BxCx256x256)`` tensors, plus ``sam_masks Bx1xHxW``
            with ``return_sam_masks=True``.
        """
        self._require_image()
        if return_sam_masks and not self.is_hq:
            raise ValueError("return_sam_masks needs an HQ model (e.g. edge_sam_dyt_hq)")
        _check_torch_prompts(point_coords, point_labels, boxes, mask_input, self.low_res_size)
        masks, scores, low_res, sam_masks, _ = self._run(
            point_coords, point_labels, boxes, mask_input,
            resolve_num_outputs(num_multimask_outputs, multimask_output), return_logits, use_stability_score,
            want_sam=return_sam_masks,
        )
        return (masks, scores, low_res, sam_masks) if return_sam_masks else (masks, scores, low_res)

    @torch.no_grad()
    def predict_low_res_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                              num_multimask_outputs: int, use_stability_score: bool,
                              boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """B prompt sets (model-input frame: ``BxNx2`` points with ``BxN`` labels, and/or ``Bx4`` boxes) ->
        ``(scores BxC, low_res BxCxhxw)``, without upscaling: callers that filter many candidates (the
        automatic mask generator) upscale only the survivors."""
        self._require_image()
        batch = self.prompts_per_call
        rows = (point_coords if point_coords is not None else boxes).shape[0]

        def part(t: torch.Tensor | None, start: int) -> torch.Tensor | None:
            return None if t is None else t[start:start + batch]

        parts = [self._decode(part(point_coords, start), part(point_labels, start), part(boxes, start), None,
                              num_multimask_outputs) for start in range(0, rows, batch)]
        low_res = torch.cat([part[0] for part in parts])
        scores = torch.cat([part[2] for part in parts])
        if use_stability_score:
            scores = calculate_stability_score(low_res, self.model.mask_threshold, self.stability_score_offset)
        return scores.float(), low_res.float()

    @torch.no_grad()
    def upscale_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``BxCxhxw`` -> logits in the original image frame."""
        return self.model.postprocess_masks(low_res, self.input_size, self.original_size)

    def _decode(self, coords: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None,
                mask_input: torch.Tensor | None, num_outputs: int) -> tuple[torch.Tensor, ...]:
        """One decoder call on prompts in the model-input frame: ``(low_res, low_res_sam or None, scores)``."""
        features = self.features
        interm = None
        if isinstance(features, tuple):
            features, interm = features
        points = (coords.float(), labels.int()) if coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=None if boxes is None else boxes.float(),
                                                  masks=None if mask_input is None else mask_input.float())
        # Without a mask input, the image-only part of the decoder is shared by every click on this image.
        context = self._image_context() if mask_input is None else None
        outs = self.model.mask_decoder(
            image_embeddings=features,
            image_pe=self.dense_pe if self.dense_pe is not None else self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            num_multimask_outputs=num_outputs,
            interm_embeddings=interm,
            **({"context": context} if context is not None else {}),
        )
        if len(outs) == 3:  # HQ decoder: (HQ mask, token-0 SAM mask, token-0 IoU)
            return outs
        low_res, scores = outs
        return low_res, None, scores

    @torch.no_grad()
    def _run(
        self,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        num_outputs: int,
        return_logits: bool,
        use_stability_score: bool,
        want_sam: bool = False,
        best_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        low_res, low_res_sam, scores = self._decode(coords, labels, boxes, mask_input, num_outputs)
        if use_stability_score or best_only:
            stability = calculate_stability_score(low_res, self.model.mask_threshold, self.stability_score_offset)
            if use_stability_score:
                scores = stability
            if best_only and low_res.shape[1] > 1:
                keep = torch.nan_to_num(stability.float(), nan=-1.0).argmax(dim=1, keepdim=True)
                low_res = low_res.gather(1, keep[:, :, None, None].expand(-1, -1, *low_res.shape[-2:]))
                scores = scores.gather(1, keep)
        postprocess = self.model.postprocess_masks if return_logits else self.model.postprocess_binary_masks
        masks = postprocess(low_res, self.input_size, self.original_size)
        sam_masks = None
        if want_sam and low_res_sam is not None:
            sam_masks = postprocess(low_res_sam, self.input_size, self.original_size)
        return masks, scores.float(), low_res.float(), sam_masks, low_res_sam


def _check_points(coords: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if coords is None or labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must have shape Nx2 with N >= 1, got {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise ValueError(f"point_labels must have shape ({coords.shape[0]},) to match point_coords, got {labels.shape}")
    if not np.all(np.isfinite(coords)):
        raise ValueError("point_coords contains NaN or infinite values")
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise ValueError(f"point_labels must be integers, got {labels.tolist()}")
    bad = sorted({int(v) for v in labels.tolist()} - VALID_LABELS)
    if bad:
        raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {bad}")
    return coords, labels.astype(np.int64)


def _check_torch_prompts(
    coords: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None, low_res: int,
) -> int | None:
    """Validate batched prompt shapes; return the batch size (None when no prompt is given)."""
    sizes: list[int] = []
    if (coords is None) != (labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if coords is not None and labels is not None:
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise ValueError(f"point_coords must be BxNx2, got {tuple(coords.shape)}")
        if tuple(labels.shape) != tuple(coords.shape[:2]):
            raise ValueError(f"point_labels must be BxN = {tuple(coords.shape[:2])}, got {tuple(labels.shape)}")
        sizes.append(int(coords.shape[0]))
    if boxes is not None:
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be Bx4, got {tuple(boxes.shape)}")
        sizes.append(int(boxes.shape[0]))
    if mask_input is not None:
        if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, low_res, low_res):
            raise ValueError(f"mask_input must be Bx1x{low_res}x{low_res}, got {tuple(mask_input.shape)}")
        sizes.append(int(mask_input.shape[0]))
    if len(set(sizes)) > 1:
        raise ValueError(f"prompt batch sizes differ between inputs: {sizes}")
    return sizes[0] if sizes else None
