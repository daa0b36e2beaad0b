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
    # Weight each image by its share of the batch's prompts: the total is then upstream's mean over all
    # prompts of the batch (and, with equal prompt counts per rank, DDP equals one process on the union).
    n_total = max(sum(int(b.shape[0]) for b in batch.boxes), 1)
    for i in range(len(batch.keys)):
        boxes = batch.boxes[i].to(s_emb.device, torch.float32)
        n = boxes.shape[0]
        if n == 0:
            continue
        valid = padding_valid_mask(batch.sizes[i : i + 1], img_size, 4 * s_emb.shape[-1]).expand(n, -1, -1, -1)
        if kind == "box":
            coords = torch.zeros((n, 0, 2), device=s_emb.device)
            labels = torch.zeros((n, 0), device=s_emb.device)
            box_arg = boxes
        else:
            coords = batch.points[i].to(s_emb.device, torch.float32).reshape(n, -1, 2)
            labels = torch.ones(coords.shape[:2], device=s_emb.device)
            box_arg = None
        s_feats = [f[i : i + 1] for f in s_interm] if s_interm is not None else None
        t_feats = [f[i : i + 1] for f in t_interm] if t_interm is not None else None
        for it in range(iters):
            points = (coords, labels) if coords.shape[1] else None
            with torch.no_grad():
                t_logits, t_iou = teacher.decode(t_emb[i : i + 1], points, box_arg, num_masks, t_feats)
            with ctx["autocast"]:
                out = run_decoder(student, s_emb[i : i + 1], points, box_arg, num_masks, s_feats)
            s_logits = out[0].float()
            bce, dice = mask_distill_losses(s_logits, t_logits, None if hq else valid, temp)
            share = scale * n / n_total / iters
            totals["bce"] = totals["bce"] + share * bce
            totals["dice"] = totals["dice"] + share * dice
            if it + 1 < iters:
                new_c, new_l = sample_refinement_points(s_logits.detach(), t_logits, valid, t_iou, img_size,
                                                        pc.points_per_refine_iter, pc.min_error_pixels)
                coords = torch.cat([coords, new_c], dim=1)
                labels = torch.cat([labels, new_l], dim=1)
    loss = lc.bce * totals["bce"] + lc.dice * totals["dice"]
    return {"loss": loss, **totals}


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
    s_logits, t_logits, targets = [], [], []
    for i in range(len(batch.keys)):
        if batch.boxes[i].shape[0] == 0:
            continue
        coords = batch.points[i].to(device, torch.float32)
        labels = batch.extras["point_labels"][i].to(device, torch.float32)
        points = (coords, labels) if coords.shape[1] else None
        box = batch.boxes[i].to(device, torch.float32) if bool(batch.extras["box_used"][i].any()) else None
        t_feats = [f[i : i + 1] for f in t_interm] if t_interm is not None else None
        s_feats = [f[i : i + 1] for f in s_interm] if s_interm is not None else None
        t_logits.append(teacher.decode(t_emb[i : i + 1], points, box, 1, t_feats)[0])
        with ctx["autocast"]:
            s_logits.append(run_decoder(student, s_emb[i : i + 1], points, box, 1, s_feats)[0].float())
        targets.append(batch.extras["gt_masks"][i].to(device, torch.float32)[:, None] / 255.0)
    if not s_logits:
        # No image of this batch has foreground: a zero loss that still touches every trainable parameter, so
        # DDP's gradient reduction stays in step with the other ranks.
        zero = sum((p.sum() for p in student.parameters() if p.requires_grad), torch.zeros((), device=device)) * 0.0
        return {"loss": zero, "gt_bce": zero.detach(), "gt_dice": zero.detach(), "bce": zero.detach(),
                "dice": zero.detach()}
    s_all, t_all, y_all = torch.cat(s_logits), torch.cat(t_logits), torch.cat(targets)
    gt_bce, gt_dice = gt_mask_losses(s_all, y_all, lc.gt_points, lc.gt_oversample, lc.gt_importance)
    kd_bce, kd_dice = mask_distill_losses(s_all, t_all, None, lc.temperature)
    scale = lc.temperature ** 2
    loss = lc.gt_bce * gt_bce + lc.gt_dice * gt_dice + scale * (lc.bce * kd_bce + lc.dice * kd_dice)
    return {"loss": loss, "gt_bce": gt_bce, "gt_dice": gt_dice, "bce": scale * kd_bce, "dice": scale * kd_dice}
