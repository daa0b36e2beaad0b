"""Loss computation of one micro-batch for each kind of step (the recipe's ``_loss_step``).

Each ``*_losses`` function returns a dict with ``"loss"`` (the weighted total) and its named components.
They run inside the DDP-wrapped :class:`LossModule`, so one forward call covers the whole
prompt-in-the-loop iteration and DDP sees a single backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from edgesam_core.config.schema import DistillConfig
from edgesam_core.errors import DatasetError
from edgesam_core.training.losses import embedding_mse_loss, gt_mask_losses, mask_distill_losses, padding_valid_mask
from edgesam_core.training.refinement_clicks import choose_prompt_kind, sample_refinement_points
from edgesam_core.training.teacher import Teacher, run_decoder, split_features


@dataclass
class Batch:
    """A collated training batch on the target device.

    ``images`` Bx3xSxS (normalised, padded); ``sizes`` Bx2 pre-pad (h, w); ``boxes[i]`` P_ix4 xyxy and
    ``points[i]`` P_ix1x2 (HQSeg: P_ixKx2) in the S frame; ``keys[i]`` the image id (cache key). HQSeg
    batches add ``extras`` ``point_labels`` (P_ixK), ``box_used`` (P_i bool) and ``gt_masks`` (P_ixSxS uint8).
    """

    images: torch.Tensor
    sizes: torch.Tensor
    boxes: list[torch.Tensor]
    points: list[torch.Tensor]
    keys: list[str]
    extras: dict[str, Any] = field(default_factory=dict)


class LossModule(nn.Module):
    """Wraps the student (the only registered submodule, hence the only thing DDP synchronises) and a loss
    function that may use the teacher (held in a closure, outside DDP)."""

    def __init__(self, student: nn.Module, fn: Callable[..., dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.student = student
        self.fn = fn

    def forward(self, batch: Batch, ctx: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.fn(self.student, batch, ctx)


def encoder_losses(student: nn.Module, batch: Batch, ctx: dict[str, Any], *, teacher: Teacher,
                   cfg: DistillConfig) -> dict[str, torch.Tensor]:
    """Step 1: masked pixel-wise MSE between student and teacher embeddings (spec §3.4)."""
    target = teacher.embeddings(batch.images, batch.keys, ctx.get("teacher_autocast"))
    with ctx["autocast"]:
        emb, _ = split_features(student.image_encoder(batch.images))
    mse = embedding_mse_loss(emb.float(), target, batch.sizes, batch.images.shape[-1])
    return {"loss": cfg.loss.pixel_wise * mse, "mse": mse}


def decoder_losses(student: nn.Module, batch: Batch, ctx: dict[str, Any], *, teacher: Teacher,
                   cfg: DistillConfig) -> dict[str, torch.Tensor]:
    """Steps 2, 3, joint and hq: prompt-in-the-loop BCE + Dice against the teacher's hard masks (§3.5, §3.8).

    The prompt kind is drawn once per batch; iteration t > 0 appends clicks sampled from the student/teacher
    disagreement of iteration t-1. Each iteration's losses are divided by the iteration count. For the HQ
    step the student's HQ-token mask is distilled from the HQ teacher with temperature T (losses x T^2).
    """
    pc, lc = cfg.prompts, cfg.loss
    hq = bool(getattr(student, "is_hq", False))
    kind = choose_prompt_kind(pc.types, cfg.train.seed, ctx["step"], ctx.get("micro", 0))
    num_masks = pc.multimask_output if (kind == "point" or pc.multimask_on_box) else 1
    iters = pc.decode_iters if (kind == "point" or pc.iter_on_box) else 1
    img_size = batch.images.shape[-1]

    with torch.no_grad():
        if hq:
            t_emb, t_interm = teacher.encode(batch.images, ctx.get("teacher_autocast"))
        else:
            t_emb, t_interm = teacher.embeddings(batch.images, batch.keys, ctx.get("teacher_autocast")), None
    # A frozen encoder (steps 3 and hq) needs no autograd graph: saves its activations' memory.
    enc_trains = any(p.requires_grad for p in student.image_encoder.parameters())
    with ctx["autocast"], torch.set_grad_enabled(enc_trains and torch.is_grad_enabled()):
        s_emb, s_interm = split_features(student.image_encoder(batch.images))

    temp = lc.temperature
    scale = temp * temp if hq else 1.0
    totals = {"bce": torch.zeros((), device=s_emb.device), "dice": torch.zeros((), device=s_emb.device)}
    owners, boxes, coords = _batch_prompts(batch, kind, s_emb.device)
    n = owners.shape[0]
    if n == 0:
        return {"loss": _zero_loss(student, s_emb.device), **totals}
    # The whole batch's prompts go through each decoder in one call (upstream's MaskDecoderBatch); the losses
    # are then upstream's mean over all prompts of the batch (and, with equal prompt counts per rank, DDP
    # equals one process on the union).
    valid = padding_valid_mask(batch.sizes.to(s_emb.device), img_size, 4 * s_emb.shape[-1])[owners]
    box_arg = boxes if kind == "box" else None
    labels = torch.ones(coords.shape[:2], device=s_emb.device)
    for it in range(iters):
        points = (coords, labels) if coords.shape[1] else None
        with torch.no_grad():
            t_logits, t_iou = teacher.decode(t_emb, points, box_arg, num_masks, t_interm, owners)
        with ctx["autocast"]:
            out = run_decoder(student, s_emb, points, box_arg, num_masks, s_interm, owners)
        s_logits = out[0].float()
        bce, dice = mask_distill_losses(s_logits, t_logits, None if hq else valid, temp)
        totals["bce"] = totals["bce"] + scale / iters * bce
        totals["dice"] = totals["dice"] + scale / iters * dice
        if it + 1 < iters:
            new_c, new_l = sample_refinement_points(s_logits.detach(), t_logits, valid, t_iou, img_size,
                                                    pc.points_per_refine_iter, pc.min_error_pixels)
            coords = torch.cat([coords, new_c], dim=1)
            labels = torch.cat([labels, new_l], dim=1)
    loss = lc.bce * totals["bce"] + lc.dice * totals["dice"]
    return {"loss": loss, **totals}


def _batch_prompts(batch: Batch, kind: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The batch's prompt sets in image order: ``(image index P, boxes Px4, points PxKx2)`` (K = 0 for boxes).

    Raises:
        DatasetError: point prompts with different point counts per image (they cannot share a call).
    """
    counts = [int(b.shape[0]) for b in batch.boxes]
    owners = torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))
    boxes = torch.cat([b.to(device, torch.float32).reshape(-1, 4) for b in batch.boxes])
    if kind == "box":
        return owners, boxes, torch.zeros((boxes.shape[0], 0, 2), device=device)
    points = [p.to(device, torch.float32).reshape(c, -1, 2) for p, c in zip(batch.points, counts) if c]
    if len({p.shape[1] for p in points}) > 1:
        raise DatasetError(f"Point prompts of one batch must have the same number of points per prompt, got "
                           f"{sorted({p.shape[1] for p in points})}; give every object the same point count")
    return owners, boxes, (torch.cat(points) if points else torch.zeros((0, 1, 2), device=device))


def _zero_loss(student: nn.Module, device: torch.device) -> torch.Tensor:
    """A zero loss that still touches every trainable parameter, so DDP's gradient reduction stays in step
    with ranks whose batch had prompts."""
    return sum((p.sum() for p in student.parameters() if p.requires_grad), torch.zeros((), device=device)) * 0.0


def hq_gt_losses(student: nn.Module, batch: Batch, ctx: dict[str, Any], *, teacher: Teacher,
                 cfg: DistillConfig) -> dict[str, torch.Tensor]:
    """HQ step on HQSeg-44K (spec §3.8): ground-truth loss plus distillation from the HQ-SAM teacher.

    Every image carries one prompt (box and/or positive/negative points, drawn by the dataset); student and
    teacher decode it once (one mask output). Loss = ``gt_bce * BCE + gt_dice * Dice`` on uncertainty-sampled
    points of the student's HQ logits against the mask / 255, plus ``T^2 * (bce * BCE + dice * Dice)`` of the
    student's HQ logits / T against the teacher's hard HQ mask. Images whose crop holds no foreground have
    no prompt and are left out; the mean is over the masks of the batch (upstream's ``num_masks``).
    """
    lc = cfg.loss
    with torch.no_grad():
        t_emb, t_interm = teacher.encode(batch.images, ctx.get("teacher_autocast"))
    enc_trains = any(p.requires_grad for p in student.image_encoder.parameters())
    with ctx["autocast"], torch.set_grad_enabled(enc_trains and torch.is_grad_enabled()):
        s_emb, s_interm = split_features(student.image_encoder(batch.images))
    device = s_emb.device
    # Images whose prompts have the same form (box or not, point count) share one decoder call; the results
    # are put back in image order, so the sampled loss points fall as with one call per image.
    groups: dict[tuple[bool, int], list[int]] = {}
    for i in range(len(batch.keys)):
        if batch.boxes[i].shape[0]:
            form = (bool(batch.extras["box_used"][i].any()), int(batch.points[i].shape[1]))
            groups.setdefault(form, []).append(i)
    if not groups:
        # No image of this batch has foreground.
        zero = _zero_loss(student, device)
        return {"loss": zero, "gt_bce": zero.detach(), "gt_dice": zero.detach(), "bce": zero.detach(),
                "dice": zero.detach()}
    s_parts: dict[int, torch.Tensor] = {}
    t_parts: dict[int, torch.Tensor] = {}
    for (use_box, num_points), rows in groups.items():
        counts = torch.tensor([int(batch.boxes[i].shape[0]) for i in rows], device=device)
        owners = torch.repeat_interleave(torch.tensor(rows, device=device), counts)
        points = None
        if num_points:
            points = (torch.cat([batch.points[i].to(device, torch.float32) for i in rows]),
                      torch.cat([batch.extras["point_labels"][i].to(device, torch.float32) for i in rows]))
        box = torch.cat([batch.boxes[i].to(device, torch.float32) for i in rows]) if use_box else None
        t_out = teacher.decode(t_emb, points, box, 1, t_interm, owners)[0]
        with ctx["autocast"]:
            s_out = run_decoder(student, s_emb, points, box, 1, s_interm, owners)[0].float()
        for i, t_rows, s_rows in zip(rows, t_out.split(counts.tolist()), s_out.split(counts.tolist())):
            t_parts[i], s_parts[i] = t_rows, s_rows
    order = sorted(s_parts)
    s_logits, t_logits = [s_parts[i] for i in order], [t_parts[i] for i in order]
    targets = [batch.extras["gt_masks"][i].to(device, torch.float32)[:, None] / 255.0 for i in order]
    s_all, t_all, y_all = torch.cat(s_logits), torch.cat(t_logits), torch.cat(targets)
    gt_bce, gt_dice = gt_mask_losses(s_all, y_all, lc.gt_points, lc.gt_oversample, lc.gt_importance)
    kd_bce, kd_dice = mask_distill_losses(s_all, t_all, None, lc.temperature)
    scale = lc.temperature ** 2
    loss = lc.gt_bce * gt_bce + lc.gt_dice * gt_dice + scale * (lc.bce * kd_bce + lc.dice * kd_dice)
    return {"loss": loss, "gt_bce": gt_bce, "gt_dice": gt_dice, "bce": scale * kd_bce, "dice": scale * kd_dice}
