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
from edgesam_core.training.losses import embedding_mse_loss, mask_distill_losses, padding_valid_mask
from edgesam_core.training.prompts import choose_prompt_kind, sample_refinement_points
from edgesam_core.training.teacher import Teacher, run_decoder, split_features


@dataclass
class Batch:
    """A collated training batch on the target device.

    ``images`` Bx3xSxS (normalised, padded); ``sizes`` Bx2 pre-pad (h, w); ``boxes[i]`` P_ix4 xyxy and
    ``points[i]`` P_ix1x2 in the S frame; ``keys[i]`` the image id (cache key).
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
