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


# --- HQ step ground-truth loss (HQ-SAM's ``loss_masks``, spec §3.8 (a)) -----------------------------------


def point_sample(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``NxCxHxW`` maps at ``NxPx2`` points given as (x, y) in [0, 1] (``align_corners``
    False: ``(i + 0.5) / W`` is the centre of pixel column ``i``). Returns ``NxCxP``.

    Points in the outer half pixel take the edge value (``padding_mode="border"``). HQ-SAM pads with zeros
    there, which pulls logits towards 0, so its importance sampling over-picks the frame border as
    "uncertain" and its targets fade at the edge.
    """
    grid = 2.0 * coords[:, :, None, :] - 1.0
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]


@torch.no_grad()
def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample: float = 3.0,
                           importance: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """PointRend-style training points: ``int(importance * num_points)`` of them are the most uncertain
    (smallest ``|logit|``, taken at the sampled position) of ``int(num_points * oversample)`` uniform
    candidates, the rest are uniform.

    Args:
        logits: ``Nx1xHxW`` mask logits.
        num_points: points per mask.
        oversample: candidates per point (>= 1).
        importance: share of importance-sampled points, in [0, 1].
        generator: optional RNG (the global torch RNG otherwise).

    Returns:
        ``Nxnum_pointsx2`` (x, y) in [0, 1].
    """
    n, device = logits.shape[0], logits.device

    def uniform(count: int) -> torch.Tensor:
        return torch.rand((n, count, 2), generator=generator, device="cpu" if generator is not None else device
                          ).to(device)

    candidates = uniform(int(num_points * oversample))
    uncertainty = -point_sample(logits.float(), candidates)[:, 0].abs()
    k = int(importance * num_points)
    idx = uncertainty.topk(k, dim=1).indices
    chosen = candidates.gather(1, idx[..., None].expand(-1, -1, 2))
    return torch.cat([chosen, uniform(num_points - k)], dim=1)


def point_mask_losses(logits: torch.Tensor, target: torch.Tensor,
                      coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, Dice) of mask logits against soft targets, both sampled at the same points.

    BCE-with-logits is averaged over the points of each mask, Dice is ``1 - (2 sum(p y) + 1) / (sum(p) +
    sum(y) + 1)`` over the points with ``p = sigmoid(logit)``; both are then averaged over masks.

    Args:
        logits: ``Nx1xhxw`` student logits (any resolution: coordinates are normalised).
        target: ``Nx1xHxW`` targets in [0, 1] (HQSeg masks / 255, at input resolution).
        coords: ``NxPx2`` (x, y) in [0, 1].
    """
    with torch.no_grad():
        labels = point_sample(target.float(), coords)[:, 0]
    point_logits = point_sample(logits.float(), coords)[:, 0]
    bce = F.binary_cross_entropy_with_logits(point_logits, labels, reduction="none").mean(1).mean()
    p = point_logits.sigmoid()
    dice = (1 - (2 * (p * labels).sum(1) + 1) / (p.sum(1) + labels.sum(1) + 1)).mean()
    return bce, dice


def gt_mask_losses(logits: torch.Tensor, target: torch.Tensor, num_points: int = 112 * 112,
                   oversample: float = 3.0, importance: float = 0.75,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """HQ-SAM's ground-truth mask loss: :func:`point_mask_losses` at :func:`uncertain_point_coords` chosen
    from the student's own uncertainty (no gradient flows through the choice)."""
    coords = uncertain_point_coords(logits.detach(), num_points, oversample, importance, generator)
    return point_mask_losses(logits, target, coords)
