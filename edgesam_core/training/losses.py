"""Pure distillation losses (spec §3.4-3.5, §3.8).

All functions take float tensors and return a scalar; masks are computed by the callers with
:func:`padding_valid_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padding_valid_mask(sizes: torch.Tensor, img_size: int, out_size: int) -> torch.Tensor:
    """Soft mask of the real (unpadded) image area, bilinearly resized to ``out_size``.

    Args:
        sizes: ``Bx2`` integer tensor of pre-pad (h, w) in the ``img_size`` frame.
        img_size: side of the padded square input (1024).
        out_size: side of the output grid (64 for embeddings, 256 for low-res masks).

    Returns:
        ``Bx1xout_size x out_size`` float mask in [0, 1] (not thresholded).
    """
    rows = torch.arange(img_size, device=sizes.device)
    h = sizes[:, 0].view(-1, 1, 1)
    w = sizes[:, 1].view(-1, 1, 1)
    full = (rows.view(1, -1, 1) < h) & (rows.view(1, 1, -1) < w)
    return F.interpolate(full[:, None].float(), size=(out_size, out_size), mode="bilinear", align_corners=False)


def embedding_mse_loss(student: torch.Tensor, teacher: torch.Tensor, sizes: torch.Tensor,
                       img_size: int) -> torch.Tensor:
    """Step-1 pixel-wise MSE between embeddings, ignoring the padded area.

    Per image: sum over valid pixels of the channel-mean squared error divided by the valid pixel count,
    where valid = (bilinear-downsampled padding mask > 0.5); then the mean over images.

    Args:
        student: ``BxCxGxG`` student embedding.
        teacher: ``BxCxGxG`` teacher embedding (any float dtype; compared in fp32).
        sizes: ``Bx2`` pre-pad (h, w).
        img_size: padded input side.
    """
    grid = student.shape[-1]
    valid = (padding_valid_mask(sizes, img_size, grid) > 0.5).float()[:, 0]
    err = (student.float() - teacher.float()).pow(2).mean(dim=1)
    per_image = (err * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)
    return per_image.mean()


def mask_bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the soft valid area of each prompt, then over prompts.

    Args:
        logits: ``PxCxHxW`` student logits (already divided by the temperature).
        target: ``PxCxHxW`` hard 0/1 targets.
        valid: ``PxCxHxW`` (or broadcastable) soft valid mask.
    """
    valid = valid.expand_as(logits).flatten(1)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1)
    return ((loss * valid).sum(1) / valid.sum(1).clamp_min(1e-6)).mean()


def mask_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Dice loss per (prompt, mask) with sigmoid probabilities and targets both multiplied by ``valid``.

    ``1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)``, mean over prompts and masks.
    """
    valid = valid.expand_as(logits).flatten(2)
    p = torch.sigmoid(logits.float()).flatten(2) * valid
    y = target.float().flatten(2) * valid
    return (1 - (2 * (p * y).sum(-1) + 1) / (p.sum(-1) + y.sum(-1) + 1)).mean()


def mask_distill_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    valid: torch.Tensor | None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, Dice) of student logits against the teacher's hard masks ``1[teacher / T > 0]``.

    Args:
        student_logits: ``PxCxHxW``.
        teacher_logits: ``PxCxHxW`` (no gradient).
        valid: soft valid mask broadcastable to the logits, or None for all-valid.
        temperature: T; the student logits are divided by it (the hard target does not change).
    """
    s = student_logits.float() / temperature
    y = (teacher_logits.float() / temperature > 0).float()
    v = torch.ones_like(s[:, :1]) if valid is None else valid
    return mask_bce_loss(s, y, v), mask_dice_loss(s, y, v)
