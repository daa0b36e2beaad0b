"""Prompted mIoU evaluation with refinement clicks, on any backend behind the predictor interface.

Protocol (EdgeSAM's, with the fixes listed in the README): for each image, up to ``max_prompts`` GT objects
(a seeded subset without replacement when there are more); each object gets an initial prompt (GT box, GT
centre point, or a seeded random GT point); then, ``refine_clicks`` times, a point is added at the centre
of the largest error region of the last prediction and the decoder runs again with every point so far
(and the box, for box prompts). The previous logits are not fed back as a mask prompt, as upstream.
IoU is computed at the original image resolution; mIoU is the mean over all prompts of all images, x100.
``protocol="upstream"`` instead reproduces upstream's GT resampling and random refinement clicks
(see :mod:`edgesam_core.evaluation.upstream`), for numbers comparable with EdgeSAM's ``eval_mIoU.py``.
Round by round, the prompts of an image's objects still clicking share decoder calls when the predictor
decodes several per call (``prompts_per_call`` > 1, e.g. on CUDA); the results are those of one call each.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgeSamError
from ..inference.base import Predictor
from ..progress import NullProgress, Progress
from .eval_prompts import PROMPT_TYPES, Prompt, make_prompt
from .image_results import ImageResult, ImageResults
from .metrics import SIZE_BUCKETS, MIoU, aggregate_miou, mask_iou, refinement_click, size_bucket
from .samples import EvalObject, EvalSample
from .upstream import upstream_click, upstream_iou, upstream_mask_center, upstream_subset, upstream_target

MULTIMASK_SELECT: tuple[str, ...] = ("score", "area", "oracle")
#: ``exact``: exact GT, clicks at the centre of the largest error region; ``upstream``: EdgeSAM's eval_mIoU.py.
PROTOCOLS: tuple[str, ...] = ("exact", "upstream")
#: Cap on prompts per decoder call: their full-resolution masks are held at once (64 x 4 masks of 1024 x 768
#: would be 800 MB of logits).
MAX_PROMPTS_PER_CALL = 32


@dataclass(frozen=True)
class MaskRecord:
    """One scored prediction, passed to ``on_mask`` (used to save COCO results)."""

    sample: EvalSample
    obj: EvalObject
    area: float
    click: int
    mask: np.ndarray
    score: float


@dataclass
class EvalReport:
    """Result of :func:`evaluate`.

    ``clicks[k]`` holds the mIoU after click ``k + 1`` (click 1 = the initial prompt alone), overall
    (``"all"``) and per COCO size bucket, each with its prompt count. ``ious`` is the P x K array of
    per-prompt IoUs and ``buckets`` the size bucket of each prompt. ``computed_images`` were evaluated by this
    call (the others' results were read back: resumed, or other shards'); ``missing_images`` belong to shards
    whose results are not written yet (the report is then partial).
    """

    settings: dict[str, Any]
    num_images: int
    num_prompts: int
    skipped_empty: int
    seconds: float
    clicks: list[dict[str, MIoU]]
    ious: np.ndarray = field(repr=False)
    buckets: list[str] = field(repr=False)
    computed_images: int = -1
    missing_images: int = 0

    @property
    def images_per_second(self) -> float:
        """Images evaluated by this call per second of its run."""
        computed = self.num_images if self.computed_images < 0 else self.computed_images
        return computed / self.seconds if self.seconds > 0 else 0.0

    def miou(self, click: int = 1, size: str = "all") -> float:
        """mIoU (x100) after ``click`` (1-based) for ``size`` (``all``, ``small``, ``medium``, ``large``)."""
        return self.clicks[click - 1][size].miou

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-prompt IoUs are left out)."""
        return {
            "settings": dict(self.settings),
            "num_images": self.num_images,
            "num_prompts": self.num_prompts,
            "skipped_empty_masks": self.skipped_empty,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            **({"computed_images": self.computed_images} if 0 <= self.computed_images != self.num_images else {}),
            **({"missing_images": self.missing_images} if self.missing_images else {}),
            "clicks": [
                {"click": k + 1, **{name: entry[name].to_dict() for name in ("all", *SIZE_BUCKETS)}}
                for k, entry in enumerate(self.clicks)
            ],
        }


@dataclass
class _Track:
    """One object's state through its clicks: the prompt so far, its target and its IoU per round."""

    obj: EvalObject
    area: float
    target: np.ndarray
    prompt: Prompt
    click_rng: np.random.Generator
    scored: np.ndarray | None = None
    row: list[float] = field(default_factory=list)
    records: list[MaskRecord] = field(default_factory=list)
    done: bool = False


def _seed_for(seed: int, *parts: str | int) -> list[int]:
    """Seed sequence that depends on the run seed and on stable identifiers, not on iteration order."""
    return [seed & 0xFFFFFFFF] + [zlib.crc32(str(p).encode()) for p in parts]


def select_objects(objects: Sequence[EvalObject], max_prompts: int | None, seed: int, key: str) -> list[EvalObject]:
    """At most ``max_prompts`` objects of an image: a seeded subset without replacement, in original order."""
    if max_prompts is None or max_prompts <= 0 or len(objects) <= max_prompts:
        return list(objects)
    rng = np.random.default_rng(_seed_for(seed, key))
    keep = np.sort(rng.choice(len(objects), size=max_prompts, replace=False))
    return [objects[int(i)] for i in keep]


def _predict(predictor: Predictor, prompt: Prompt, num_outputs: int,
             shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    result = predictor.predict(point_coords=prompt.points, point_labels=prompt.labels, box=prompt.box,
                               num_multimask_outputs=num_outputs)
    masks = np.asarray(result[0]).astype(bool, copy=False)
    scores = np.asarray(result[1], dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or masks.shape[1:] != shape or scores.shape[0] != masks.shape[0]:
        raise EdgeSamError(
            f"The predictor returned masks of shape {masks.shape} and scores of shape {scores.shape}; "
            f"expected C x {shape[0]} x {shape[1]} masks (original image size) and C scores"
        )
    return masks, scores, np.asarray(result[2])


def _prompts_per_call(predictor: Predictor) -> int:
    """How many prompt sets the predictor decodes best in one call (1 for predictors that do not say)."""
    return max(1, min(int(getattr(predictor, "prompts_per_call", 1)), MAX_PROMPTS_PER_CALL))


def _predict_many(predictor: Predictor, prompts: Sequence[Prompt], num_outputs: int,
                  shape: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``_predict`` for many prompts on the current image: prompts of the same form (point count, box or not)
    share decoder calls of the predictor's ``prompts_per_call`` (64 on CUDA, capped at
    ``MAX_PROMPTS_PER_CALL``), no padding; results in input order."""
    per_call = _prompts_per_call(predictor)
    if per_call == 1 or len(prompts) == 1 or not hasattr(predictor, "predict_torch"):
        return [_predict(predictor, p, num_outputs, shape) for p in prompts]
    forms: dict[tuple[int, bool], list[int]] = {}
    for i, p in enumerate(prompts):
        forms.setdefault((0 if p.points is None else len(p.points), p.box is not None), []).append(i)
    results: list[Any] = [None] * len(prompts)
    for rows in forms.values():
        for start in range(0, len(rows), per_call):
            chunk = rows[start:start + per_call]
            for i, out in zip(chunk, _predict_rows(predictor, [prompts[i] for i in chunk], num_outputs, shape)):
                results[i] = out
    return results


def _predict_rows(predictor: Predictor, prompts: Sequence[Prompt], num_outputs: int,
                  shape: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prompts of one form through one ``predict_torch`` call (model-input frame, as the predictor's own
    ``predict`` transforms them)."""
    import torch

    transform, size = predictor.transform, predictor.original_size  # type: ignore[attr-defined]
    coords = labels = boxes = None
    if prompts[0].points is not None:
        coords = torch.as_tensor(np.stack([transform.apply_coords(np.asarray(p.points, np.float64), size)
                                           for p in prompts]), dtype=torch.float)
        labels = torch.as_tensor(np.stack([np.asarray(p.labels) for p in prompts]), dtype=torch.int)
    if prompts[0].box is not None:
        boxes = torch.as_tensor(transform.apply_boxes(np.stack([np.asarray(p.box, np.float64).reshape(4)
                                                                for p in prompts]), size), dtype=torch.float)
    masks, scores, low_res = predictor.predict_torch(coords, labels, boxes,  # type: ignore[attr-defined]
                                                     num_multimask_outputs=num_outputs)[:3]
    masks, scores, low_res = (t.detach().cpu().numpy() for t in (masks, scores, low_res))
    if masks.shape[:2] != scores.shape or masks.shape[2:] != shape or masks.shape[0] != len(prompts):
        raise EdgeSamError(f"The predictor returned masks of shape {masks.shape} and scores of shape {scores.shape} "
                           f"for {len(prompts)} prompts; expected B x C x {shape[0]} x {shape[1]} masks and B x C "
                           "scores")
    return [(masks[b].astype(bool, copy=False), scores[b].astype(np.float64), low_res[b]) for b in range(len(prompts))]


def _select(masks: np.ndarray, scores: np.ndarray, how: str, target: np.ndarray,
            iou_fn: Callable[[np.ndarray, np.ndarray], float] = mask_iou) -> tuple[int, float | None]:
    """Index of the mask to keep (and its IoU when it was computed to choose)."""
    if masks.shape[0] == 1:
        return 0, None
    if how == "score":
        return int(np.argmax(scores)), None
    if how == "area":
        return int(np.argmax(masks.reshape(masks.shape[0], -1).sum(axis=1))), None
    ious = [iou_fn(m, target) for m in masks]
    best = int(np.nanargmax(ious)) if not np.isnan(ious).all() else 0
    return best, ious[best]


def _img_size(predictor: Predictor) -> int:
    """Model input side of a predictor (every backend keeps its ``ResizeLongestSide`` as ``transform``)."""
    transform = getattr(predictor, "transform", None)
    size = getattr(transform, "target_length", None) or getattr(predictor, "img_size", None)
    if not size:
        raise ConfigError("protocol 'upstream' needs a predictor with a 'transform' (ResizeLongestSide) or "
                          "'img_size'; use protocol 'exact' for this backend")
    return int(size)


def _validate(prompt: str, refine_clicks: int, num_multimask_outputs: int, multimask_select: str,
              protocol: str = "exact") -> None:
    if prompt not in PROMPT_TYPES:
        raise ConfigError(f"Unknown prompt type '{prompt}'; choose one of {', '.join(PROMPT_TYPES)}")
    if refine_clicks < 0:
        raise ConfigError(f"--refine-clicks must be >= 0, got {refine_clicks}")
    if num_multimask_outputs not in (1, 3, 4):
        raise ConfigError(f"--num-multimask-outputs must be 1, 3 or 4, got {num_multimask_outputs}")
    if multimask_select not in MULTIMASK_SELECT:
        raise ConfigError(f"Unknown --multimask-select '{multimask_select}'; choose one of "
                          f"{', '.join(MULTIMASK_SELECT)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown --protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")


def evaluate(
    predictor: Predictor,
    dataset: Iterable[EvalSample],
    prompt: str = "box",
    refine_clicks: int = 0,
    num_samples: int | None = None,
    reference_predictor: Predictor | None = None,
    progress: Progress | None = None,
    *,
    max_prompts: int | None = 64,
    num_multimask_outputs: int = 1,
    multimask_select: str = "score",
    seed: int = 0,
    on_mask: Callable[[MaskRecord], None] | None = None,
    protocol: str = "exact",
    results: ImageResults | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> EvalReport:
    """Score a predictor's masks against ground truth (or a reference model) with optional refinement clicks.

    Args:
        predictor: object with ``set_image(rgb uint8 H x W x 3)`` and ``predict(point_coords N x 2,
            point_labels N, box 4, num_multimask_outputs=C) -> (masks C x H x W bool, scores C, ...)``, all
            in original image pixels; with ``prompts_per_call`` > 1, ``transform`` and ``predict_torch`` (as
            :class:`~edgesam_core.inference.SamPredictor`) prompts are decoded that many per call.
        dataset: iterable of :class:`EvalSample` (see :mod:`edgesam_core.evaluation.samples`).
        prompt: ``box``, ``point-center``, ``point-random``, ``box-center`` or ``point-annotated``.
        refine_clicks: corrective clicks after the initial prompt (report has ``1 + refine_clicks`` entries).
        num_samples: evaluate at most this many images (None: all).
        reference_predictor: if given, targets are this model's masks for the initial prompt (selected by
            score, or by area with ``multimask_select="area"``) instead of the GT; size buckets still use
            the GT area.
        progress: progress reporter (one task, advanced per image).
        max_prompts: objects per image (EdgeSAM's protocol: 64); None or <= 0 for all.
        num_multimask_outputs: masks per prediction, 1, 3 or 4.
        multimask_select: how to keep one of several masks: ``score`` (highest predicted IoU), ``area``
            (largest), ``oracle`` (highest IoU with the target).
        seed: seed for ``point-random`` and for the object subset when an image has more than ``max_prompts``.
        on_mask: called with a :class:`MaskRecord` for every kept mask (e.g. a COCO results writer).
        protocol: ``exact`` (default: exact GT, clicks at the centre of the largest error region) or
            ``upstream`` (EdgeSAM's eval_mIoU.py: GT resampled through the model frame, clicks drawn at
            random from the low-res error region, label -2 below 10 pixels; seeded by ``seed``).
        results: per-image results on disk: each computed image's are written there.
        resume: reuse this job's stored results of an image instead of computing it again (needs ``results``).
        shard: ``(rank, world_size)``: compute every ``world_size``-th image from ``rank`` (e.g. under torchrun);
            the other images' results are read from ``results`` (needs it when ``world_size`` > 1).

    Images are read one ahead, in a background thread, while the current one is evaluated.

    Returns:
        An :class:`EvalReport` over every image with a result; ``missing`` counts the images of other shards
        whose results are not in ``results`` yet (their objects are not in the report).

    Raises:
        ConfigError: invalid settings.
        DatasetError: unreadable images or annotations.
    """
    _validate(prompt, refine_clicks, num_multimask_outputs, multimask_select, protocol)
    upstream = protocol == "upstream"
    img_size = _img_size(predictor) if upstream else 0
    iou_fn = upstream_iou if upstream else mask_iou
    progress = progress or NullProgress()
    total: int | None = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    if num_samples is not None and num_samples >= 0:
        dataset = itertools.islice(dataset, num_samples)
        total = num_samples if total is None else min(total, num_samples)
    reference_select = "area" if multimask_select == "area" else "score"
    rounds = 1 + refine_clicks

    rank, world = shard
    if (world > 1 or resume) and results is None:
        raise ConfigError("sharding and resuming an evaluation need a results folder (results=ImageResults(...))")

    def plan(index: int, sample: EvalSample) -> tuple[bool, ImageResult | None]:
        """Whether to compute this image here, and its result to reuse (this shard's own, with ``resume``)."""
        if index % world != rank:
            return False, None  # another shard's: read once this shard's own images are done
        stored = results.load(sample.key) if resume and results is not None else None
        return stored is None, stored

    slots: list[ImageResult | None] = []  # one per image, in the dataset's order
    others: dict[int, str] = {}  # slot -> image key of another shard's image
    computed = 0
    start = time.perf_counter()
    task = progress.add_task("Evaluating" if world == 1 else f"Evaluating (shard {rank + 1}/{world})", total=total)
    for sample, compute, stored, loading in _read_ahead(dataset, plan):
        if not compute:
            if stored is None:
                others[len(slots)] = sample.key
            slots.append(stored)
            progress.advance(task)
            continue
        rows: list[list[float]] = []
        buckets: list[str] = []
        skipped = 0
        if upstream:
            objects = [sample.objects[i] for i in upstream_subset(len(sample.objects), max_prompts, sample.index)]
        else:
            objects = select_objects(sample.objects, max_prompts, seed, sample.key)
        image = loading.result()
        predictor.set_image(image)
        if reference_predictor is not None:
            reference_predictor.set_image(image)
        shape = (sample.height, sample.width)
        tracks: list[_Track] = []
        for obj in objects:
            gt = obj.mask()
            if not gt.any():
                skipped += 1  # IoU and point prompts are undefined for an empty object
                continue
            area = obj.area if obj.area >= 0 else float(np.count_nonzero(gt))
            rng = np.random.default_rng(_seed_for(seed, sample.key, obj.ann_id))
            if upstream and prompt == "point-center":
                current = Prompt(np.array([upstream_mask_center(gt, img_size)], np.float32), np.ones(1, np.int64), None)
            else:
                current = make_prompt(prompt, gt, obj.box, rng, obj.point)
            tracks.append(_Track(obj, area, gt, current,
                                 np.random.default_rng(_seed_for(seed, sample.key, obj.ann_id, "clicks"))))
        if reference_predictor is not None and tracks:
            for track, (ref_masks, ref_scores, _) in zip(tracks, _predict_many(
                    reference_predictor, [t.prompt for t in tracks], num_multimask_outputs, shape)):
                track.target = ref_masks[_select(ref_masks, ref_scores, reference_select, track.target)[0]]
        for track in tracks:
            track.scored = upstream_target(track.target, img_size) if upstream else track.target
        # Round by round, the prompts of every object still clicking go to the decoder together.
        for k in range(rounds):
            active = [t for t in tracks if not t.done]
            if not active:
                break
            outputs = _predict_many(predictor, [t.prompt for t in active], num_multimask_outputs, shape)
            for track, (masks, scores, low_res) in zip(active, outputs):
                index, iou = _select(masks, scores, multimask_select, track.scored, iou_fn)
                mask = masks[index]
                track.row.append(iou_fn(mask, track.scored) if iou is None else iou)
                if on_mask is not None:
                    track.records.append(MaskRecord(sample, track.obj, track.area, k + 1, mask, float(scores[index])))
                if k + 1 == rounds:
                    continue
                if upstream:
                    # Upstream samples from the kept mask, or from channel 0 when "oracle" keeps them all.
                    channel = 0 if multimask_select == "oracle" else index
                    click, (x, y) = upstream_click(low_res[channel], track.target, img_size, track.click_rng)
                    track.prompt = track.prompt.with_click(x, y, click.label)
                    continue
                click = refinement_click(mask, track.target)
                if click is None:
                    # Already perfect: a user would stop clicking, and re-predicting the same prompt gives the
                    # same mask, so the remaining rounds keep this result.
                    track.done = True
                    for later in range(k + 2, rounds + 1):
                        track.row.append(track.row[-1])
                        if on_mask is not None:
                            track.records.append(MaskRecord(sample, track.obj, track.area, later, mask,
                                                            float(scores[index])))
                    continue
                track.prompt = track.prompt.with_click(click.x, click.y, click.label)
        for track in tracks:
            for record in track.records:
                on_mask(record)  # type: ignore[misc]  # records are only kept with on_mask
            rows.append([float(v) for v in track.row])
            buckets.append(size_bucket(track.area))
        slots.append(ImageResult(rows, buckets, skipped))
        if results is not None:
            results.save(sample.key, slots[-1])
        computed += 1
        progress.advance(task)
    progress.finish(task)

    seconds = time.perf_counter() - start
    # Other shards' images last: each shard saves its own before reading theirs, so the last to finish sees all.
    for slot, key in others.items():
        slots[slot] = results.load(key) if results is not None else None
    entries = [entry for entry in slots if entry is not None]
    missing = len(slots) - len(entries)
    rows = [row for entry in entries for row in entry.rows]
    buckets = [bucket for entry in entries for bucket in entry.buckets]
    ious = np.asarray(rows, dtype=np.float64).reshape(len(rows), rounds)
    settings = {
        "prompt": prompt,
        "refine_clicks": refine_clicks,
        "max_prompts": max_prompts if max_prompts and max_prompts > 0 else None,
        "num_multimask_outputs": num_multimask_outputs,
        "multimask_select": multimask_select,
        "target": "reference" if reference_predictor is not None else "ground_truth",
        "seed": seed,
        "protocol": protocol,
    }
    return EvalReport(settings=settings, num_images=len(entries), num_prompts=len(rows),
                      skipped_empty=sum(entry.skipped for entry in entries), seconds=seconds,
                      clicks=aggregate_miou(ious, buckets), ious=ious, buckets=buckets, computed_images=computed,
                      missing_images=missing)


def _read_ahead(samples: Iterable[EvalSample], plan: Callable[[int, EvalSample], tuple[bool, Any]]) -> Any:
    """``(sample, compute, stored, loading)`` per sample, in order; ``loading`` (a future of its image, for the
    samples to compute) starts one sample ahead in a background thread, so decoding overlaps inference."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = None
        for index, sample in enumerate(samples):
            compute, stored = plan(index, sample)
            current = (sample, compute, stored, reader.submit(sample.image) if compute else None)
            if pending is not None:
                yield pending
            pending = current
        if pending is not None:
            yield pending
