"""``edgesam finetune``: adapt the mask decoder to your own masks, with the image encoder frozen.

Ground-truth training as SAM's: each step takes one image's cached embedding and up to ``batch`` of its
objects; each object gets a prompt simulated from its mask (a box jittered by N(0, 10 % of its side), or a
point drawn inside the mask), and point prompts get a corrective click on the error region of the first
prediction (positive in a missed part, negative in a spill) and a second decoder pass. Loss = 20 x focal +
Dice on the low-res logits against the mask in the same frame (point prompts: the best of the 3 multimask
outputs, as SAM), + MSE of the IoU head against the true IoU of the chosen output.

Held-out mIoU (exact GT box; GT centre point with the IoU head's pick of 3), at the original resolution, by
prompt type and COCO size bucket, is measured before training and after every epoch; the best epoch's
weights are written as a plain state dict (``segment``, ``evaluate``, ``demo``, ``export-onnx`` load it).
Runs resume from ``finetune_state.pt`` (written after every epoch); a step whose loss is not finite is
skipped, and 10 in a row stop the run.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgesam_core.errors import ConfigError, DatasetError, TrainingError
from edgesam_core.progress import NullProgress, Progress
from edgesam_core.training.distributed import all_true, barrier

TRAINABLE = ("decoder", "encoder+decoder", "prompt", "proposals")
FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0
MAX_BAD_STEPS = 10
STATE_FILE = "finetune_state.pt"


@dataclass
class FinetuneOptions:
    """What ``edgesam finetune`` trains and how (mirrors its options)."""

    model_type: str = "edge_sam_dyt"
    train: str = "decoder"
    epochs: int = 10
    batch: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    val_fraction: float = 0.2
    seed: int = 0
    max_objects: int = 32
    cache_dir: Path | None = None
    device: str = "cpu"
    #: ``--train prompt``: the task's name in ``<out>/tasks.pt`` and the class it segments (None: every object).
    task: str | None = None
    category: str | None = None
    #: ``--train prompt``: also learn a dense head (a 1x1 convolution of the image embedding) with the tokens.
    task_dense: bool = False
    #: ``--train encoder+decoder``: rank of the encoder's low-rank adapters (merged into the weights at the end).
    lora_rank: int = 8

    def __post_init__(self) -> None:
        if self.train not in TRAINABLE:
            raise ConfigError(f"--train {self.train!r} is not available; choose one of {', '.join(TRAINABLE)}")
        if self.train == "prompt" and not (self.task and self.task.replace("_", "").replace("-", "").isalnum()):
            raise ConfigError("--train prompt needs --task NAME (letters, digits, - and _), the name to segment by")
        if self.train != "prompt" and (self.task or self.category or self.task_dense):
            raise ConfigError("--task, --category and --task-dense go with --train prompt")
        if self.epochs < 1 or self.batch < 1:
            raise ConfigError("--epochs and --batch must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be between 0 and 1, got {self.val_fraction:g}")


@dataclass
class Target:
    """One training object: its mask in the low-res frame and the data to simulate prompts from."""

    low_res: torch.Tensor  # g4 x g4 float 0/1 in the padded model frame
    mask_points: np.ndarray  # (n, 2) x, y of mask pixels in the model-input frame (subsampled)
    box: np.ndarray  # xyxy in the model-input frame


@dataclass
class Item:
    """One image: where it is, its sizes and its objects (the embedding is looked up in the cache)."""

    path: Path
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    objects: list[Any]
    targets: list[Target] = field(default_factory=list)


@dataclass
class FinetuneResult:
    """Where the weights went and what held-out mIoU they reached."""

    checkpoint: Path
    report: Path
    plot: Path | None
    before: dict[str, float]
    best: dict[str, float]
    best_epoch: int
    history: list[dict[str, Any]]
    prompts_per_second: float
    cache: dict[str, Any]
    #: The trained model (in memory; adapters not merged).
    model: Any = None


def split_samples(samples: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Train / held-out split by a seeded hash of each image's key (stable when images are added)."""
    if len(samples) < 2:
        raise DatasetError(f"need at least 2 annotated images to hold some out, found {len(samples)}")
    scored = sorted(samples, key=lambda s: zlib.crc32(f"{seed}:{s.key}".encode()))
    n_val = min(len(samples) - 1, max(1, round(len(samples) * val_fraction)))
    return scored[n_val:], scored[:n_val]


def low_res_target(mask: np.ndarray, img_size: int, low_res: int) -> torch.Tensor:
    """An ``HxW`` mask in the decoder's low-res frame: resized like the image (longest side ``img_size``),
    zero-padded, area-averaged to ``low_res`` and thresholded at 0.5."""
    from edgesam_core.data.transforms import ResizeLongestSide

    h, w = ResizeLongestSide.get_preprocess_shape(mask.shape[0], mask.shape[1], img_size)
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
    x = F.pad(x, (0, img_size - w, 0, img_size - h))
    return (F.adaptive_avg_pool2d(x, low_res)[0, 0] > 0.5).float()


def _prepare(sample: Any, img_size: int, low_res: int, max_objects: int, rng: np.random.Generator) -> Item:
    from edgesam_core.data.transforms import ResizeLongestSide

    transform = ResizeLongestSide(img_size)
    original = (sample.height, sample.width)
    input_size = transform.get_preprocess_shape(sample.height, sample.width, img_size)
    objects = list(sample.objects)[:max_objects]
    item = Item(Path(sample.path), original, input_size, objects)
    for obj in objects:
        mask = obj.mask()
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        keep = rng.choice(len(xs), size=min(len(xs), 2048), replace=False)
        points = transform.apply_coords(np.stack([xs[keep] + 0.5, ys[keep] + 0.5], 1).astype(np.float64), original)
        box = transform.apply_boxes(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64),
                                    original)[0]
        item.targets.append(Target(low_res_target(mask, img_size, low_res), points.astype(np.float32),
                                   box.astype(np.float32)))
    return item


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask (mean over pixels): ``logits`` / ``target`` ``B x C x h x w`` -> ``B x C``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss per mask: ``B x C``."""
    prob = logits.sigmoid().flatten(2)
    t = target.flatten(2)
    return 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)


def _true_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).flatten(2).float()
    t = target.flatten(2)
    inter, union = (pred * t).sum(-1), ((pred + t) > 0).float().sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _mask_losses(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per prompt: the lowest focal + Dice over its outputs, plus the IoU head's MSE on that output."""
    target = target[:, None].expand_as(logits)
    per = FOCAL_WEIGHT * _focal(logits, target) + DICE_WEIGHT * _dice(logits, target)
    best = per.argmin(dim=1)
    rows = torch.arange(len(best))
    iou = _true_iou(logits.detach(), target)[rows, best]
    return per[rows, best] + IOU_WEIGHT * (iou_pred[rows, best] - iou) ** 2


def image_context(model: Any, embedding: torch.Tensor) -> Any:
    """The decoder's per-image work for prompts without a mask input, computed once per image and shared by
    every prompt on it (with autograd: the decoder's image-side weights train through it too)."""
    if not hasattr(model.mask_decoder, "image_context"):
        return None
    _, dense = model.prompt_encoder(points=None, boxes=None, masks=None)
    return model.mask_decoder.image_context(embedding, model.prompt_encoder.get_dense_pe(), dense)


def _decode(model: Any, embedding: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None,
            boxes: torch.Tensor | None, num_outputs: int, context: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    masks, iou = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    num_multimask_outputs=num_outputs, context=context)[:2]
    return masks, iou


def _corrective_click(logits: torch.Tensor, target: torch.Tensor, scale: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One click per prompt on its error region (low-res frame -> model-input frame): positive on a missed
    pixel when misses outnumber spills, else negative on a spilled pixel."""
    pred = (logits > 0).cpu().numpy()
    gt = target.cpu().numpy() > 0.5
    coords, labels = np.zeros((len(pred), 2), np.float32), np.zeros(len(pred), np.float32)
    for i in range(len(pred)):
        missed, spilled = gt[i] & ~pred[i], pred[i] & ~gt[i]
        positive = missed.sum() >= spilled.sum()
        region = missed if positive else spilled
        if not region.any():
            region, positive = gt[i], True
        ys, xs = np.nonzero(region)
        k = int(rng.integers(len(xs)))
        coords[i] = ((xs[k] + 0.5) * scale, (ys[k] + 0.5) * scale)
        labels[i] = 1.0 if positive else 0.0
    return coords, labels


def train_step(model: Any, embedding: torch.Tensor, targets: list[Target], rng: np.random.Generator,
               img_size: int) -> tuple[torch.Tensor, int]:
    """The loss of one image's prompts (boxes and points with a corrective click) and the prompt count."""
    device = embedding.device
    context = image_context(model, embedding)
    kinds = rng.random(len(targets)) < 0.5
    losses = []
    count = 0
    boxed = [t for t, k in zip(targets, kinds) if k]
    pointed = [t for t, k in zip(targets, kinds) if not k]
    if boxed:
        boxes = []
        for t in boxed:
            side = np.array([t.box[2] - t.box[0], t.box[3] - t.box[1]] * 2, np.float32)
            noise = np.clip(rng.normal(0, 0.1, 4) * side, -20 * img_size / 1024, 20 * img_size / 1024)
            boxes.append(np.clip(t.box + noise, 0, img_size))
        gt = torch.stack([t.low_res for t in boxed]).to(device)
        logits, iou = _decode(model, embedding, None, torch.as_tensor(np.stack(boxes), device=device), 1, context)
        losses.append(_mask_losses(logits.float(), iou.float(), gt))
        count += len(boxed)
    if pointed:
        first = np.stack([t.mask_points[int(rng.integers(len(t.mask_points)))] for t in pointed])[:, None]
        labels = torch.ones(len(pointed), 1, device=device)
        gt = torch.stack([t.low_res for t in pointed]).to(device)
        coords = torch.as_tensor(first, device=device)
        logits, iou = _decode(model, embedding, (coords, labels), None, 3, context)
        losses.append(_mask_losses(logits.float(), iou.float(), gt))
        chosen = logits.detach()[torch.arange(len(pointed)), iou.detach().argmax(1)]
        extra, extra_labels = _corrective_click(chosen, gt, img_size / gt.shape[-1], rng)
        coords2 = torch.cat([coords, torch.as_tensor(extra, device=device)[:, None]], 1)
        labels2 = torch.cat([labels, torch.as_tensor(extra_labels, device=device)[:, None]], 1)
        logits, iou = _decode(model, embedding, (coords2, labels2), None, 1, context)
        losses.append(_mask_losses(logits.float(), iou.float(), gt))
        count += 2 * len(pointed)
    return torch.cat(losses).mean(), count


@torch.no_grad()
def heldout_miou(model: Any, items: list[Item], cache: Any, load: Any) -> dict[str, float]:
    """mIoU x100 at the original resolution: ``box`` (exact GT box, single output) and ``point`` (GT centre
    point, the IoU head's pick of 3), overall and per COCO size bucket (``point/small`` ...)."""
    from edgesam_core.data.prompt_sampling import mask_center_point
    from edgesam_core.data.transforms import ResizeLongestSide
    from edgesam_core.evaluation.metrics import mask_iou, size_bucket

    scores: dict[str, list[float]] = {}
    for item in items:
        embedding = cache.get(item.path, lambda it=item: load(it))
        context = image_context(model, embedding)
        transform = ResizeLongestSide(int(model.img_size))
        for obj in item.objects:
            mask = obj.mask()
            if not mask.any():
                continue
            bucket = size_bucket(float(mask.sum()))
            box = torch.as_tensor(transform.apply_boxes(obj.box[None].astype(np.float64), item.original_size),
                                  dtype=torch.float32)
            point = transform.apply_coords(mask_center_point(mask)[None].astype(np.float64), item.original_size)
            runs = {
                "box": _decode(model, embedding, None, box, 1, context),
                "point": _decode(model, embedding, (torch.as_tensor(point[None], dtype=torch.float32),
                                                    torch.ones(1, 1)), None, 3, context),
            }
            for kind, (logits, iou) in runs.items():
                low = logits[:, int(iou[0].argmax())][:, None]
                full = model.postprocess_masks(low, item.input_size, item.original_size)[0, 0] > 0
                value = mask_iou(full.numpy(), mask)
                scores.setdefault(kind, []).append(value)
                scores.setdefault(f"{kind}/{bucket}", []).append(value)
    return {k: round(100.0 * float(np.mean(v)), 2) for k, v in sorted(scores.items())}


def _load_rgb(item: Item) -> np.ndarray:
    from edgesam_core.data.prompt_dataset import load_rgb

    return load_rgb(item.path)


def finetune(checkpoint: str | Path, data: Any, out: str | Path, opts: FinetuneOptions,
             progress: Progress | None = None, resume: bool = True) -> FinetuneResult:
    """Fine-tune ``checkpoint``'s mask decoder on ``data`` (an iterable of evaluation samples, e.g.
    :func:`~edgesam_core.evaluation.samples.open_user_dataset`) and write the best weights to ``out``.

    Raises:
        ConfigError: an option this engine does not take. DatasetError: too few images or objects.
        TrainingError: 10 steps in a row with a non-finite loss.
    """
    from edgesam_core.models import build_sam
    from edgesam_core.training.distributed import init_distributed
    from edgesam_core.training.embedding_cache import EmbeddingCache
    from edgesam_core.training.state import atomic_save

    dist_info = init_distributed(opts.device)
    if dist_info.enabled and opts.train in ("prompt", "proposals"):
        raise ConfigError(f"--train {opts.train} runs in one process (a small head on cached embeddings); drop "
                          "torchrun for it")
    progress = (progress or NullProgress()) if dist_info.is_main else NullProgress()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    device = dist_info.device
    model = build_sam(opts.model_type, checkpoint).to(device).eval()
    if model.is_hq:
        raise ConfigError("fine-tuning HQ models is not supported yet: fine-tune the plain variant (e.g. "
                          "edge_sam_dyt) and build its HQ decoder with 'edgesam distill --step hq'")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.mask_decoder.parameters()) if opts.train not in ("prompt", "proposals") else []
    if opts.train == "encoder+decoder":
        from edgesam_core.training.lora import add_lora

        trainable += [p for a in add_lora(model.image_encoder, opts.lora_rank) for p in (a.down, a.up)]
    for p in trainable:
        p.requires_grad_(True)
    img_size = int(model.img_size)
    low_res = 4 * int(model.prompt_encoder.image_embedding_size[0])

    samples = [s for s in data if s.objects]
    train_samples, val_samples = split_samples(samples, opts.val_fraction, opts.seed)
    task = progress.add_task("Reading masks", total=len(samples))
    train_items, val_items = [], []
    for group, source in ((train_items, train_samples), (val_items, val_samples)):
        for sample in source:
            item = _prepare(sample, img_size, low_res, opts.max_objects, rng)
            if item.targets:
                group.append(item)
            progress.advance(task)
    progress.finish(task)
    if not train_items or not val_items:
        raise DatasetError("no training or no held-out image has an object with pixels; add annotated images")

    cache: Any = EmbeddingCache(opts.cache_dir or out / "embeddings", model)
    if opts.train == "encoder+decoder":  # the encoder trains: embeddings cannot be cached
        from edgesam_core.training.embedding_cache import FreshEmbeddings

        cache = FreshEmbeddings(model)
    task = progress.add_task("Encoding images (once, cached)", total=len(train_items) + len(val_items))
    start = time.perf_counter()
    for k, item in enumerate(train_items + val_items):
        if opts.train != "encoder+decoder" and k % dist_info.world_size == dist_info.rank:  # each rank its share
            cache.get(item.path, lambda it=item: _load_rgb(it))
        progress.advance(task)
    progress.finish(task)
    barrier(dist_info)
    cache_seconds = time.perf_counter() - start

    if opts.train == "proposals":
        from edgesam_core.training.proposal_training import train_proposals

        return train_proposals(model, checkpoint, train_items, val_items, cache, cache_seconds, out, opts, progress,
                               rng)
    if opts.train == "prompt":
        return _train_task(model, checkpoint, train_items, val_items, cache, cache_seconds, out, opts, progress, rng,
                           _category_ids(data, opts.category))
    optimizer = torch.optim.AdamW(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
    history: list[dict[str, Any]] = []
    state_path = out / STATE_FILE
    first_epoch = 0
    before = best = None
    best_epoch = 0
    if resume and state_path.is_file():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: never unpickle it unsafely
            raise ConfigError(f"{state_path} cannot be read ({type(exc).__name__}); pass --no-resume to start over "
                              "or another --out") from exc
        if not isinstance(state, dict) or state.get("options") != _options_key(opts, checkpoint):
            raise ConfigError(f"{state_path} was written by a run with other options or data; pass another --out "
                              "or --no-resume to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, history = int(state["epoch"]), json.loads(state["history"])
        before, best, best_epoch = json.loads(state["before"]), json.loads(state["best"]), int(state["best_epoch"])
    if before is None:
        before = heldout_miou(model, val_items, cache, _load_rgb) if dist_info.is_main else {}
        best, best_epoch = before, 0
        if dist_info.is_main:
            _save_weights(model, out / _weights_name(checkpoint))
    stem_path = out / _weights_name(checkpoint)

    prompts_done, train_seconds, bad = 0, 0.0, 0
    for epoch in range(first_epoch + 1, opts.epochs + 1):
        units = _epoch_units(train_items, epoch, opts)
        # Every rank takes the same number of steps (the remainder is dropped), each on its own units; gradients
        # are averaged over the ranks before every optimizer step, so all ranks hold the same weights.
        per_rank = len(units) // dist_info.world_size
        mine = units[dist_info.rank::dist_info.world_size][:per_rank]
        task = progress.add_task(f"Epoch {epoch}/{opts.epochs}", total=len(mine))
        losses = []
        model.mask_decoder.train()
        for number, (index, picks) in mine:
            item = train_items[index]
            if opts.train == "encoder+decoder":  # the encoder trains: it runs (with autograd) in this step
                cache.grad = True
                model.image_encoder.train()
            embedding = cache.get(item.path, lambda it=item: _load_rgb(it)).to(device)
            cache.grad = False
            model.image_encoder.eval()
            targets = [item.targets[k] for k in picks]
            t0 = time.perf_counter()
            loss, count = train_step(model, embedding, targets, np.random.default_rng([opts.seed, epoch, number]),
                                     img_size)
            optimizer.zero_grad(set_to_none=True)
            bad = _nan_guard(all_true(bool(torch.isfinite(loss)), dist_info), bad, opts.lr)  # ranks skip alike
            if bad:
                continue
            loss.backward()
            _average_gradients(trainable, dist_info)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            train_seconds += time.perf_counter() - t0
            prompts_done += count
            losses.append(float(loss.detach()))
            progress.advance(task)
        progress.finish(task)
        model.mask_decoder.eval()
        if dist_info.is_main:
            miou = heldout_miou(model, val_items, cache, _load_rgb)
            history.append(epoch_record(epoch, losses, miou=miou))
            progress.log(f"epoch {epoch}: loss {history[-1]['loss']:.4f}, held-out mIoU box "
                         f"{miou.get('box', 0):.1f} point {miou.get('point', 0):.1f}")
            if _overall(miou) > _overall(best):
                best, best_epoch = miou, epoch
                _save_weights(model, stem_path)
            atomic_save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "history": json.dumps(history), "before": json.dumps(before), "best": json.dumps(best),
                         "best_epoch": best_epoch, "options": _options_key(opts, checkpoint)}, state_path)
        barrier(dist_info)

    speed = prompts_done / train_seconds if train_seconds else 0.0
    cache_info = _cache_info(cache, len(train_items) + len(val_items), cache_seconds)
    report = {"checkpoint": str(checkpoint), "model": opts.model_type, "weights": str(stem_path),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
              "train_images": len(train_items), "heldout_images": len(val_items),
              "train_objects": sum(len(i.targets) for i in train_items),
              "heldout_objects": sum(len(i.targets) for i in val_items),
              "heldout_miou_before": before, "heldout_miou_best": best, "best_epoch": best_epoch,
              "history": history, "prompts_per_second": round(speed, 2), "embedding_cache": cache_info}
    report_path, plot = out / "finetune_report.json", None
    if dist_info.is_main:
        (out / "heldout_images.txt").write_text("".join(f"{i.path.name}\n" for i in val_items))
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        plot = _plot(history, before, out / "finetune_miou.png")
    return FinetuneResult(stem_path, report_path, plot, before, best, best_epoch, history, speed, cache_info, model)


def _epoch_units(items: list[Item], epoch: int, opts: FinetuneOptions) -> list[tuple[int, tuple[int, list[int]]]]:
    """The epoch's steps, numbered: ``(number, (image index, object indices))``, in an order drawn from (seed,
    epoch) alone, so every rank of a distributed run sees the same list. With a training encoder, one step per
    image (on its first ``batch`` objects); else every object once, ``batch`` per step."""
    rng = np.random.default_rng([opts.seed, epoch])
    units = []
    for index in rng.permutation(len(items)):
        picks = [int(k) for k in rng.permutation(len(items[int(index)].targets))]
        chunks = [picks[:opts.batch]] if opts.train == "encoder+decoder" else \
            [picks[lo:lo + opts.batch] for lo in range(0, len(picks), opts.batch)]
        units += [(int(index), chunk) for chunk in chunks]
    return list(enumerate(units))


def _nan_guard(finite: bool, bad: int, lr: float) -> int:
    """Steps in a row with a non-finite loss, this one included (0: train on); raises at :data:`MAX_BAD_STEPS`."""
    if finite:
        return 0
    if bad + 1 >= MAX_BAD_STEPS:
        raise TrainingError(f"{bad + 1} steps in a row had a non-finite loss; lower --lr (now {lr:g})")
    return bad + 1


def epoch_record(epoch: int, losses: list[float], **measures: Any) -> dict[str, Any]:
    """One epoch's history entry: its number, mean training loss (NaN if no step ran) and held-out measures."""
    return {"epoch": epoch, "loss": round(float(np.mean(losses)) if losses else float("nan"), 5), **measures}


def guarded_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, bad: int, lr: float,
                 clip: tuple[list[torch.Tensor], float] | None = None) -> int:
    """Backward and one optimizer step (gradients clipped to ``clip = (params, max_norm)``), skipped when the loss
    is not finite; returns the steps in a row with a non-finite loss (see :func:`_nan_guard`)."""
    optimizer.zero_grad(set_to_none=True)
    bad = _nan_guard(bool(torch.isfinite(loss)), bad, lr)
    if bad:
        return bad
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip[0], clip[1])
    optimizer.step()
    return 0


def _average_gradients(params: list[torch.Tensor], info: Any) -> None:
    """Mean of each gradient over the ranks (torch.distributed all-reduce; no-op in a single process)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= info.world_size


def _category_ids(data: Any, category: str | None) -> set[int] | None:
    """Category ids named ``category`` in ``data.categories`` (None: every object counts)."""
    if category is None:
        return None
    names = getattr(data, "categories", {}) or {}
    ids = {cid for cid, name in names.items() if name == category}
    if not ids:
        known = ", ".join(sorted(set(names.values()))) or "none"
        raise DatasetError(f"no class {category!r} in the data (classes: {known}); pass one of them as --category")
    return ids


def _union(item: Item, ids: set[int] | None) -> np.ndarray:
    """The task's ground truth on one image: every object of the wanted classes, at the original size."""
    mask = np.zeros(item.original_size, bool)
    for obj in item.objects:
        if ids is None or obj.category_id in ids:
            mask |= obj.mask().astype(bool)
    return mask


@torch.no_grad()
def heldout_task_miou(model: Any, items: list[Item], cache: Any, prompt: Any,
                      truths: list[np.ndarray]) -> float:
    """mIoU x100 over images of the task prompt's mask (no click) against the task's ground truth."""
    from edgesam_core.evaluation.metrics import mask_iou
    from edgesam_core.models.task_prompt import decode_task

    values = []
    for item, truth in zip(items, truths):
        embedding = cache.get(item.path, lambda it=item: _load_rgb(it))
        logits, _ = decode_task(model, embedding, prompt)
        full = model.postprocess_masks(logits, item.input_size, item.original_size)[0, 0] > 0
        values.append(mask_iou(full.numpy(), truth))
    return round(100.0 * float(np.mean(values)), 2)


def _train_task(model: Any, checkpoint: str | Path, train_items: list[Item], val_items: list[Item], cache: Any,
                cache_seconds: float, out: Path, opts: FinetuneOptions, progress: Progress, rng: np.random.Generator,
                ids: set[int] | None) -> FinetuneResult:
    """``--train prompt``: learn the task's prompt (tokens, and a dense head with ``task_dense``) with the whole
    model frozen; save it to tasks.pt."""
    import copy

    from edgesam_core.models.task_prompt import (
        TaskPrompt,
        decode_task,
        initial_tokens,
        prompt_path_fingerprint,
        save_task,
    )

    for p in model.parameters():
        p.requires_grad_(False)
    img_size = int(model.img_size)
    low_res = 4 * int(model.prompt_encoder.image_embedding_size[0])
    prompt = TaskPrompt(initial_tokens(model), dense=opts.task_dense)
    optimizer = torch.optim.AdamW(prompt.parameters(), lr=opts.lr, weight_decay=0.0)
    train_truth = [low_res_target(_union(i, ids), img_size, low_res) for i in train_items]
    val_truth = [_union(i, ids) for i in val_items]
    before = {"task": heldout_task_miou(model, val_items, cache, prompt, val_truth)}
    best, best_epoch, best_prompt = before, 0, copy.deepcopy(prompt)
    history: list[dict[str, Any]] = []
    seen, seconds, bad = 0, 0.0, 0
    for epoch in range(1, opts.epochs + 1):
        order = rng.permutation(len(train_items))
        task = progress.add_task(f"Epoch {epoch}/{opts.epochs}", total=math.ceil(len(order) / opts.batch))
        losses = []
        for lo in range(0, len(order), opts.batch):
            t0 = time.perf_counter()
            parts = []
            for k in order[lo:lo + opts.batch]:
                item = train_items[int(k)]
                embedding = cache.get(item.path, lambda it=item: _load_rgb(it))
                logits, iou = decode_task(model, embedding, prompt)
                parts.append(_mask_losses(logits.float(), iou.float(), train_truth[int(k)][None]))
            loss = torch.cat(parts).mean()
            bad = guarded_step(loss, optimizer, bad, opts.lr)
            if bad:
                continue
            seconds += time.perf_counter() - t0
            seen += len(parts)
            losses.append(float(loss.detach()))
            progress.advance(task)
        progress.finish(task)
        miou = {"task": heldout_task_miou(model, val_items, cache, prompt, val_truth)}
        history.append(epoch_record(epoch, losses, miou=miou))
        progress.log(f"epoch {epoch}: loss {history[-1]['loss']:.4f}, held-out task mIoU {miou['task']:.1f}")
        if miou["task"] > best["task"]:
            best, best_epoch, best_prompt = miou, epoch, copy.deepcopy(prompt)
    tasks_path = out / "tasks.pt"
    save_task(tasks_path, str(opts.task), best_prompt, fingerprint=prompt_path_fingerprint(model),
              model=opts.model_type, category=opts.category or "", heldout_miou=float(best["task"]),
              checkpoint=str(checkpoint))
    speed = seen / seconds if seconds else 0.0
    cache_info = _cache_info(cache, len(train_items) + len(val_items), cache_seconds)
    report = {"checkpoint": str(checkpoint), "model": opts.model_type, "task": opts.task, "category": opts.category,
              "dense_head": opts.task_dense, "tasks_file": str(tasks_path), "train_images": len(train_items),
              "heldout_images": len(val_items),
              "heldout_miou_before": before, "heldout_miou_best": best, "best_epoch": best_epoch, "history": history,
              "images_per_second": round(speed, 2), "embedding_cache": cache_info}
    (out / "heldout_images.txt").write_text("".join(f"{i.path.name}\n" for i in val_items))
    report_path = out / f"task_{opts.task}_report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    plot = _plot(history, before, out / f"task_{opts.task}_miou.png", kinds=("task",))
    return FinetuneResult(tasks_path, report_path, plot, before, best, best_epoch, history, speed, cache_info)


def _cache_info(cache: Any, images: int, seconds: float) -> dict[str, Any]:
    """What the report says about the embeddings: size on disk, time to fill, encoded vs reused lookups."""
    return {"images": images, "bytes": cache.size_bytes(), "seconds": round(seconds, 2), "encoded": cache.misses,
            "reused": cache.hits, "folder": str(cache.folder) if cache.folder else None}


def _overall(miou: dict[str, float]) -> float:
    return (miou.get("box", 0.0) + miou.get("point", 0.0)) / 2


def _weights_name(checkpoint: str | Path) -> str:
    return f"{Path(checkpoint).stem}_finetuned.pth"


def _options_key(opts: FinetuneOptions, checkpoint: str | Path) -> str:
    keep = {k: v for k, v in asdict(opts).items() if k not in ("epochs", "cache_dir", "device")}
    return json.dumps({"checkpoint": str(checkpoint), **keep}, sort_keys=True, default=str)


def _save_weights(model: Any, path: Path) -> None:
    """A plain state dict of ``model``, encoder adapters merged into their convolutions (original keys)."""
    import copy

    from edgesam_core.training.lora import LoRAConv2d, merge_lora
    from edgesam_core.training.state import atomic_save

    if any(isinstance(m, LoRAConv2d) for m in model.modules()):
        model = copy.deepcopy(model)
        merge_lora(model)
    atomic_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)


def _plot(history: list[dict[str, Any]], before: dict[str, float], path: Path,
          kinds: tuple[str, ...] = ("box", "point"), ylabel: str = "held-out mIoU (x100)",
          key: str = "miou") -> Path | None:
    """Held-out mIoU per epoch (box, point; or the task; or ``ylabel``'s measure), epoch 0 = before; None when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [0] + [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in kinds:
        ax.plot(epochs, [before.get(kind, 0)] + [h[key].get(kind, 0) for h in history], marker="o", label=kind)
    ax.set_xlabel("epoch (0 = before fine-tuning)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
