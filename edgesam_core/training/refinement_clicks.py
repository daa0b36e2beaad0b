"""Prompt-in-the-loop helpers (spec §3.5): per-batch prompt kind and refinement clicks.

Refinement clicks are drawn uniformly from the pixels where the student's and the teacher's binary masks
disagree on the low-resolution grid (inside the valid area), labelled by the teacher (1 = the student
missed foreground, 0 = false positive), and scaled by ``img_size / low_res`` to the input frame without a
half-pixel shift. A region smaller than ``min_pixels * k`` yields ``k`` ignored clicks ``(0, 0)`` with label
-2, which the prompt encoder turns into zero tokens.
"""

from __future__ import annotations

import torch

IGNORE_LABEL = -2


def choose_prompt_kind(kinds: list[str], seed: int, step: int, micro: int = 0) -> str:
    """Pick the prompt kind of one batch, identically on every rank (seeded by seed, step and micro-batch)."""
    if len(kinds) == 1:
        return kinds[0]
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + micro)
    return kinds[int(torch.randint(len(kinds), (1,), generator=g))]


def select_by_teacher_iou(masks: torch.Tensor, teacher_iou: torch.Tensor) -> torch.Tensor:
    """Keep, per prompt, the mask channel with the highest *teacher* IoU prediction (``PxCxHxW -> PxHxW``)."""
    if masks.shape[1] == 1:
        return masks[:, 0]
    idx = teacher_iou.argmax(dim=1)
    return masks[torch.arange(masks.shape[0], device=masks.device), idx]


@torch.no_grad()
def sample_refinement_points(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    valid: torch.Tensor,
    teacher_iou: torch.Tensor,
    img_size: int,
    k: int = 1,
    min_pixels: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``k`` corrective clicks per prompt from the student/teacher disagreement.

    Args:
        student_logits: ``PxCxLxL`` student mask logits (low resolution).
        teacher_logits: ``PxCxLxL`` teacher mask logits.
        valid: ``Px1xLxL`` soft valid mask (a pixel counts where it is > 0).
        teacher_iou: ``PxC`` teacher IoU predictions, used to pick one channel when C > 1.
        img_size: input frame side (1024); coordinates are multiplied by ``img_size / L``.
        k: clicks per prompt.
        min_pixels: minimum disagreement pixels per click.
        generator: optional RNG (the global torch RNG otherwise).

    Returns:
        ``(coords Pxkx2 float (x, y) in the input frame, labels Pxk float in {1, 0, -2})``.
    """
    inside = valid[:, 0] > 0
    s = select_by_teacher_iou(student_logits, teacher_iou) > 0
    t = select_by_teacher_iou(teacher_logits, teacher_iou) > 0
    s, t = s & inside, t & inside
    err = (s != t).flatten(1)
    p, n = err.shape
    side = student_logits.shape[-1]
    # Uniform choice among error pixels = top-k of uniform scores restricted to the error set.
    scores = torch.rand((p, n), generator=generator, device=err.device if generator is None else "cpu")
    scores = scores.to(err.device).masked_fill(~err, -1.0)
    idx = scores.topk(k, dim=1).indices
    rows, cols = idx // side, idx % side
    scale = img_size / side
    coords = torch.stack([cols, rows], dim=-1).float() * scale
    labels = t.flatten(1).gather(1, idx).float()
    too_small = err.sum(1) < min_pixels * k
    coords[too_small] = 0.0
    labels[too_small] = float(IGNORE_LABEL)
    return coords, labels
