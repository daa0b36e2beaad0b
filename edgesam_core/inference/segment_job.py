"""The work behind ``edgesam segment``: run prompts on one image or a folder and write masks atomically.

Per image ``<stem>`` the output folder receives ``<stem>_mask<i>.png`` (binary 0/255), ``<stem>_overlay.png``
(masks blended over the image with the prompts drawn) and ``<stem>.json`` (per mask: COCO RLE, XYWH bbox,
area, scores and the prompt). Files are written as temporaries and renamed only when all of them are
complete, so a failure never leaves a half-written result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import EdgeSamError, InputError
from edgesam_core.inference.image_io import list_images, load_image
from edgesam_core.inference.overlay import render_overlay
from edgesam_core.inference.segment_prompts import FAST_EVERYTHING, SegmentPrompts, check_prompts_fit
from edgesam_core.progress import NullProgress, Progress


@dataclass
class MaskResult:
    """One predicted mask.

    Attributes:
        mask: ``HxW`` bool.
        score: stability score of the mask logits (EdgeSAM's recommended quality measure).
        predicted_iou: the IoU head's prediction (for ``--everything``: the generator's ranking score).
        prompt: the prompt that produced it (``points``/``labels``/``box``, or ``point`` for --everything).
    """

    mask: np.ndarray
    score: float
    predicted_iou: float
    prompt: dict[str, Any]


@dataclass
class ImageReport:
    """What was written for one image."""

    image: Path
    files: list[Path]
    masks: list[dict[str, Any]]
    error: str | None = None
    #: Outputs of the same job were already complete (``--resume``): nothing was recomputed.
    skipped: bool = False


@dataclass
class SegmentReport:
    """Outcome of a ``segment`` run."""

    out_dir: Path
    images: list[ImageReport] = field(default_factory=list)

    @property
    def failed(self) -> list[ImageReport]:
        """Images that could not be processed (folder input only; single images raise)."""
        return [r for r in self.images if r.error is not None]


# -- prediction -----------------------------------------------------------------------------------------


def predict_prompts(predictor: Any, prompts: SegmentPrompts, multimask: bool | None = None) -> list[MaskResult]:
    """Run every prompt set of ``prompts`` on the image already set in ``predictor``.

    Mask choice: ``multimask=True`` keeps the 3 multimask outputs of each prompt set; ``False`` keeps the
    single-mask output (token 0); ``None`` (default) keeps token 0 for boxes and, for point-only prompts,
    the best of the 4 outputs by stability score (the rule of EdgeSAM's demo). HQ models give one mask.
    """
    from edgesam_core.inference.amg import stability_score_numpy

    results: list[MaskResult] = []
    for prompt in prompts.prompt_sets():
        if prompt.get("task"):
            masks, iou, low_res = predictor.predict_task(str(prompt["task"]))[:3]
            results.append(MaskResult(np.asarray(masks[0], dtype=bool),
                                      float(np.nan_to_num(stability_score_numpy(low_res)[0])), float(iou[0]), prompt))
            continue
        coords = np.asarray(prompt["points"], dtype=np.float64).reshape(-1, 2) if prompt["points"] else None
        labels = np.asarray(prompt["labels"], dtype=np.int64) if prompt["points"] else None
        box = np.asarray(prompt["box"], dtype=np.float64) if prompt["box"] is not None else None
        pick_best = False
        if predictor.is_hq or multimask is False or (multimask is None and box is not None):
            count = 1
        elif multimask:
            count = 3
        else:
            count, pick_best = 4, True
        # best_only: the predictor picks by stability on the low-res logits and upscales only that mask.
        masks, iou, low_res = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                num_multimask_outputs=count, best_only=pick_best)[:3]
        stability = stability_score_numpy(low_res)
        for i in range(len(masks)):
            results.append(MaskResult(np.asarray(masks[i], dtype=bool), float(np.nan_to_num(stability[i])),
                                      float(iou[i]), prompt))
    return results


def predict_everything(predictor: Any, image: np.ndarray, boxes: Any = None,
                       **generator_options: Any) -> list[MaskResult]:
    """Segment the whole image with :class:`SamAutomaticMaskGenerator` (prompted by its point grid, or by
    ``boxes``: box proposals, ``Nx4`` xyxy pixels or a proposer of them, see the generator); largest masks first."""
    from edgesam_core.inference.automatic_mask_generator import (
        SamAutomaticMaskGenerator,
    )
    generator = SamAutomaticMaskGenerator(predictor, output_mode="binary_mask", **generator_options)
    records = sorted(generator.generate(image, boxes=boxes), key=lambda r: -r["area"])
    return [MaskResult(r["segmentation"], r["stability_score"], r["predicted_iou"], _everything_prompt(r))
            for r in records]


def _everything_prompt(record: dict[str, Any]) -> dict[str, Any]:
    """The prompt of an everything-mode mask: its grid point, or its proposal box (xyxy)."""
    if "prompt_box" in record:
        x, y, w, h = record["prompt_box"]
        return {"box": [x, y, x + w, y + h]}
    return {"point": record["point_coords"][0]}


# -- writing --------------------------------------------------------------------------------------------


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` and check that files can be written there.

    Raises:
        InputError: the folder cannot be created or written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".edgesam-write-test-", delete=True):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"Cannot write to output folder {out_dir}: {reason}") from exc
    return out_dir


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


class _AtomicWriter:
    """Collect finished temporary files and move them into place together."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.pending: list[tuple[Path, Path]] = []

    def add(self, name: str, write: Callable[[Path], None]) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        self.pending.append((Path(tmp), self.out_dir / name))
        write(Path(tmp))
        return self.out_dir / name

    def commit(self) -> None:
        for tmp, final in self.pending:
            os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; results are ordinary files
            os.replace(tmp, final)
        self.pending = []

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending = []


def write_image_outputs(out_dir: Path, stem: str, image_path: Path, image: np.ndarray,
                        results: list[MaskResult], prompts: SegmentPrompts, meta: dict[str, Any]) -> ImageReport:
    """Write the mask PNGs, overlay and JSON of one image atomically; remove stale masks of earlier runs."""
    from edgesam_core.inference.amg import encode_binary_mask

    earlier_masks = _masks_of_earlier_run(out_dir, stem)
    writer = _AtomicWriter(out_dir)
    files: list[Path] = []
    records: list[dict[str, Any]] = []
    try:
        for i, result in enumerate(results):
            name = f"{stem}_mask{i}.png"
            files.append(writer.add(name, lambda p, m=result.mask: _save_png(m.astype(np.uint8) * 255, p)))
            rle = encode_binary_mask(result.mask)
            records.append({
                "file": name,
                "segmentation": rle,
                "bbox": mask_bbox_xywh(result.mask),
                "area": int(result.mask.sum()),
                "score": round(float(result.score), 6),
                "predicted_iou": round(float(result.predicted_iou), 6),
                "prompt": result.prompt,
            })
        overlay = render_overlay(image, [r.mask for r in results], [r.score for r in results], prompts)
        files.append(writer.add(f"{stem}_overlay.png", lambda p: _save_png(overlay, p)))
        document = {"image": str(image_path), "height": int(image.shape[0]), "width": int(image.shape[1]),
                    **meta, "masks": records}
        text = json.dumps(document, indent=2)
        files.append(writer.add(f"{stem}.json", lambda p: p.write_text(text + "\n", encoding="utf-8")))
        writer.commit()
    except OSError as exc:
        raise InputError(f"Cannot write results to {out_dir}: {exc.strerror or exc}") from exc
    finally:
        writer.discard()
    _remove_stale_masks(out_dir, earlier_masks, {p.name for p in files})
    return ImageReport(image_path, files, records)


def mask_bbox_xywh(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of a bool mask (w = x1 - x0 + 1, as pycocotools' ``toBbox``); zeros if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _masks_of_earlier_run(out_dir: Path, stem: str) -> set[str]:
    """Mask files that an earlier run listed in ``STEM.json`` (only those may be removed as stale)."""
    try:
        document = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
        names = {str(m["file"]) for m in document.get("masks", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    pattern = re.compile(re.escape(stem) + r"_mask\d+\.png")
    return {n for n in names if pattern.fullmatch(n)}


def _remove_stale_masks(out_dir: Path, earlier: set[str], written: set[str]) -> None:
    """Delete masks our previous run wrote for this image that this run did not write again."""
    for name in sorted(earlier - written):
        (out_dir / name).unlink(missing_ok=True)


def output_stems(images: list[Path]) -> list[str]:
    """Output name per image: its stem, or ``stem_ext`` when two inputs share a stem."""
    stems = [p.stem for p in images]
    return [f"{p.stem}_{p.suffix.lstrip('.').lower()}" if stems.count(p.stem) > 1 else p.stem for p in images]


# -- the run --------------------------------------------------------------------------------------------


def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` of this process under ``torchrun`` (``RANK``/``WORLD_SIZE``), else ``(0, 1)``."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise InputError(f"RANK/WORLD_SIZE must be integers (as torchrun sets them): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def job_signature(prompts: SegmentPrompts, multimask: bool | None, meta: dict[str, Any]) -> dict[str, Any]:
    """What a ``STEM.json`` was computed from: a resumed run reuses it only when this matches."""
    described = dataclasses.asdict(dataclasses.replace(prompts, proposals=None))
    if prompts.proposals is not None:  # the boxes by digest (a folder's file can hold thousands)
        described["proposals"] = prompts.proposals.signature()
    return {"prompts": described, "multimask": multimask, **meta}


def _is_complete(out_dir: Path, stem: str, job: dict[str, Any]) -> bool:
    """``STEM.json`` of the same job exists and every file it lists (masks, overlay) is there."""
    try:
        document = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
        names = [str(m["file"]) for m in document["masks"]] + [f"{stem}_overlay.png"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return document.get("job") == json.loads(json.dumps(job)) and all((out_dir / n).is_file() for n in names)


def segment_images(
    source: Path,
    predictor: Any,
    prompts: SegmentPrompts,
    out_dir: Path,
    multimask: bool | None = None,
    meta: dict[str, Any] | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> SegmentReport:
    """Segment one image file or every image of a folder and write the results.

    Args:
        source: an image file or a folder of images.
        predictor: a :class:`~edgesam_core.inference.base.Predictor`.
        prompts: parsed prompts (see :func:`edgesam_core.inference.segment_prompts.build_prompts`).
        out_dir: output folder (created).
        multimask: see :func:`predict_prompts`.
        meta: extra fields for each JSON (model, checkpoint).
        progress: progress reporter (one task over the images).
        resume: skip images whose outputs of this same job are complete in ``out_dir``.
        shard: ``(rank, world_size)``: this process takes every ``world_size``-th image from ``rank`` (each
            image's outputs are its own files, so shards share ``out_dir`` without a coordinator).

    Returns:
        A :class:`SegmentReport` of this shard's images (skipped ones are listed with their existing files). For
        a single image every problem raises; for a folder a failing image is logged and recorded in the
        report, and the others are still processed. The next image is read while the current one runs.
    """
    progress = progress or NullProgress()
    source = Path(source)
    if not source.exists():
        raise InputError(f"Image not found: {source}")
    images = list_images(source) if source.is_dir() else [source]
    check_out_dir_spares_inputs(source, Path(out_dir))
    out_dir = prepare_out_dir(out_dir)
    report = SegmentReport(out_dir)
    rank, world = shard
    job = job_signature(prompts, multimask, meta or {})
    todo = [(p, s) for i, (p, s) in enumerate(zip(images, output_stems(images))) if i % world == rank]
    task = progress.add_task("Segmenting" if world == 1 else f"Segmenting (shard {rank + 1}/{world})",
                             total=len(todo))
    done: dict[int, ImageReport] = {}
    pending = []
    for index, (path, stem) in enumerate(todo):
        if resume and _is_complete(out_dir, stem, job):
            done[index] = ImageReport(path, [out_dir / f"{stem}.json"], [], skipped=True)
            progress.advance(task)
        else:
            pending.append(index)
    with ThreadPoolExecutor(max_workers=1) as reader:  # decode the next image while this one is segmented
        loads = {pending[0]: reader.submit(load_image, todo[pending[0]][0])} if pending else {}
        for position, index in enumerate(pending):
            if position + 1 < len(pending):
                upcoming = pending[position + 1]
                loads[upcoming] = reader.submit(load_image, todo[upcoming][0])
            path, stem = todo[index]
            try:
                image = loads.pop(index).result()
                done[index] = _segment_one(path, stem, image, predictor, prompts, out_dir, multimask,
                                           {**(meta or {}), "job": job})
            except EdgeSamError as exc:
                if not source.is_dir():
                    raise
                progress.log(f"Skipped {path.name}: {exc}")
                done[index] = ImageReport(path, [], [], error=str(exc))
            progress.advance(task)
    progress.finish(task)
    report.images = [done[index] for index in sorted(done)]
    return report


def _segment_one(path: Path, stem: str, image: np.ndarray, predictor: Any, prompts: SegmentPrompts,
                 out_dir: Path, multimask: bool | None, meta: dict[str, Any]) -> ImageReport:
    height, width = image.shape[:2]
    check_prompts_fit(prompts, width, height, path.name)
    boxes = None if prompts.proposals is None else prompts.proposals.boxes_for(path.name, width, height)
    if prompts.everything:  # the generator encodes the image (or its crops) itself, once
        if boxes is not None and not callable(boxes):
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        options = {"boxes": boxes} if boxes is not None else FAST_EVERYTHING if prompts.fast else {}
        results = predict_everything(predictor, image, **options)
    else:
        predictor.set_image(image)
        try:
            results = predict_prompts(predictor, prompts, multimask)
        finally:
            predictor.reset_image()
    return write_image_outputs(out_dir, stem, path, image, results, prompts, meta)


# -- model selection and the whole command ----------------------------------------------------------------

DEFAULT_MODEL = "edge_sam_dyt"
DEFAULT_HQ_MODEL = "edge_sam_dyt_hq"
_TORCH_SUFFIXES = (".pth", ".pt")


def resolve_variant(model: str | None, hq: bool = False) -> str:
    """The variant to build: ``model``, or ``edge_sam_dyt`` (``edge_sam_dyt_hq`` with ``hq``).

    Raises:
        UnknownVariantError: the name is not registered (with the closest names). ConfigError: ``hq`` with
        a model that has no HQ head.
    """
    from edgesam_core.errors import ConfigError
    from edgesam_core.models.variants import resolve_variant as variant_spec

    name = model or (DEFAULT_HQ_MODEL if hq else DEFAULT_MODEL)
    spec = variant_spec(name)  # raises UnknownVariantError with the closest name
    if hq and not spec.hq:
        raise ConfigError(f"--hq needs an HQ model such as '{DEFAULT_HQ_MODEL}', but --model is '{name}'")
    return name


def variant_is_hq(name: str | None) -> bool:
    """True when the registered variant ``name`` has an HQ mask head."""
    from edgesam_core.models.variants import resolve_variant as variant_spec

    return bool(name) and bool(variant_spec(str(name)).hq)


@dataclass
class SegmentPlan:
    """A checked ``segment`` request (see :func:`plan_segment`); ``checkpoint`` is None until fetched."""

    source: Path
    prompts: SegmentPrompts
    out_dir: Path
    variant: str | None
    checkpoint: Path | None
    device: str = "cpu"
    hq: bool = False
    multimask: bool | None = None
    decoder_source: Path | None = None
    """SAM checkpoint completing an encoder-only checkpoint (see ``edgesam_core.merge.decoder_source_for``)."""
    resume: bool = False
    """Skip images whose outputs of the same job are complete."""
    tasks: Path | None = None
    """Tasks file of ``--task`` (default: ``tasks.pt`` beside the checkpoint)."""
    shard: tuple[int, int] = (0, 1)
    """``(rank, world_size)``: this process's share of a folder (``torchrun`` sets it, see ``shard_from_env``)."""

    @property
    def is_folder(self) -> bool:
        """True when the source is a folder of images."""
        return self.source.is_dir()


def plan_segment(
    source: Path,
    prompts: SegmentPrompts,
    out_dir: Path,
    model: str | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
    hq: bool = False,
    multimask: bool | None = None,
) -> SegmentPlan:
    """Run every cheap check before anything slow: input image(s), prompts vs a single image, output
    folder, checkpoint path, model name and option conflicts.

    Raises:
        InputError, UnknownVariantError, ConfigError: one line each.
    """
    from edgesam_core.errors import ConfigError

    source = Path(source)
    if not source.exists():
        raise InputError(f"Image not found: {source}")
    if source.is_file():
        image = load_image(source)
        check_prompts_fit(prompts, image.shape[1], image.shape[0], source.name)
        if prompts.proposals is not None:
            prompts.proposals.boxes_for(source.name, image.shape[1], image.shape[0])
    else:
        list_images(source)
        if prompts.proposals is not None and prompts.proposals.is_single_list:
            raise InputError(f"{prompts.proposals.source} is one list of boxes, for one image; for the folder "
                             f"{source} map file names to boxes: {{\"photo.jpg\": [[x0, y0, x1, y1], ...]}}")
    checkpoint, variant, device, is_torch = resolve_model_source(checkpoint, model, hq, device)
    if multimask and variant is not None and is_torch and variant_is_hq(variant):
        raise ConfigError("HQ models predict one mask per prompt; drop --multimask")
    check_out_dir_spares_inputs(source, Path(out_dir))
    prepare_out_dir(out_dir)
    return SegmentPlan(source, prompts, Path(out_dir), variant, checkpoint, device, hq, multimask)


def check_out_dir_spares_inputs(source: Path, out_dir: Path) -> None:
    """Refuse a folder run whose ``--out`` is the folder it reads.

    Its masks and overlays are images: they would overwrite a user's own ``a_mask0.png``, and a second run would
    segment them. (A single image can never be overwritten: every output name adds a suffix to its stem.)

    Raises:
        InputError: with the fix (another ``--out``).
    """
    if not source.is_dir():
        return
    try:
        same = out_dir.exists() and os.path.samefile(out_dir, source)
    except OSError:
        same = False
    if same:
        raise InputError(f"--out {out_dir} is the input folder: results would overwrite or mix with the input "
                         f"images; pass another folder, e.g. --out {source.name or 'segment'}_masks")


def resolve_model_source(checkpoint: Path | None, model: str | None, hq: bool,
                         device: str) -> tuple[Path | None, str | None, str, bool]:
    """Check the model a command will load, before any download: ``(checkpoint, variant, device, is_torch)``.

    ``variant`` is resolved from ``model``/``hq`` for PyTorch weights (None: recognised from the checkpoint
    later); exported artifacts define their own model. The device is checked only for PyTorch weights.

    Raises:
        InputError: the checkpoint does not exist. UnknownVariantError / ConfigError: bad ``model``/``hq``.
        MissingDependencyError: the device is not available.
    """
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"Checkpoint not found: {checkpoint}")
    is_torch = checkpoint is None or Path(checkpoint).suffix.lower() in _TORCH_SUFFIXES
    if is_torch and (model is not None or checkpoint is None):
        variant: str | None = resolve_variant(model, hq)
    else:
        variant = model  # recognised from the checkpoint (PyTorch) or defined by the exported graphs
    if is_torch:
        from edgesam_core.inference.artifact_loader import resolve_device

        device = resolve_device(device)  # before any download: a missing GPU is reported first
    return (None if checkpoint is None else Path(checkpoint)), variant, device, is_torch


def fetch_checkpoint(plan: SegmentPlan, progress: Progress | None = None) -> Path:
    """Fill ``plan.checkpoint`` with the published weights of ``plan.variant`` when none was given."""
    if plan.checkpoint is None:
        from edgesam_core.weight_registry import ensure_weights

        plan.checkpoint = Path(ensure_weights(plan.variant or DEFAULT_MODEL, progress=progress or NullProgress()))
    return plan.checkpoint


def execute_plan(plan: SegmentPlan, progress: Progress | None = None) -> SegmentReport:
    """Load the model and segment every image of ``plan``."""
    from edgesam_core.errors import ConfigError
    from edgesam_core.inference.artifact_loader import load_predictor

    checkpoint = fetch_checkpoint(plan)
    options = {"decoder_source": plan.decoder_source} if plan.decoder_source is not None else {}
    predictor = load_predictor(checkpoint, model=plan.variant, device=plan.device, **options)
    if plan.hq and not predictor.is_hq:
        raise ConfigError(f"--hq needs an HQ model, but {checkpoint.name} is not one")
    if plan.multimask and predictor.is_hq:
        raise ConfigError("HQ models predict one mask per prompt; drop --multimask")
    variant = getattr(getattr(predictor, "model", None), "variant", None) or plan.variant
    meta = {"model": variant, "checkpoint": str(checkpoint)}
    if plan.prompts.task:
        if not hasattr(predictor, "load_tasks"):
            raise ConfigError("--task runs with a .pth checkpoint; for an exported model, export the task into the "
                              "decoder with 'edgesam export-onnx --task NAME'")
        tasks = plan.tasks or checkpoint.parent / "tasks.pt"
        predictor.load_tasks(tasks)
        if plan.prompts.task not in predictor.tasks:
            raise InputError(f"{tasks} has no task {plan.prompts.task!r} (it has {', '.join(sorted(predictor.tasks))})")
        meta["tasks"] = str(tasks)
    return segment_images(plan.source, predictor, plan.prompts, plan.out_dir, multimask=plan.multimask,
                          meta=meta, progress=progress, resume=plan.resume, shard=plan.shard)


def run_segment(
    source: Path,
    prompts: SegmentPrompts,
    out_dir: Path,
    model: str | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
    hq: bool = False,
    multimask: bool | None = None,
    progress: Progress | None = None,
) -> SegmentReport:
    """Everything ``edgesam segment`` does: :func:`plan_segment`, :func:`fetch_checkpoint`, :func:`execute_plan`.

    Without ``checkpoint`` the published weights of the variant are fetched with
    :func:`edgesam_core.weight_registry.ensure_weights`.
    """
    plan = plan_segment(source, prompts, out_dir, model, checkpoint, device, hq, multimask)
    fetch_checkpoint(plan, progress)
    return execute_plan(plan, progress)
