"""HQ-SAM's point-sampled ground-truth loss: exact agreement with a dense BCE + Dice when the points are the
pixel centres, a hand-computed constant case, importance sampling on the student's uncertainty, and finite
gradients for extreme logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgesam_core.training.losses import gt_mask_losses, point_mask_losses, point_sample, uncertain_point_coords


def _pixel_centres(n: int, h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1).expand(n, -1, -1)


def test_pixel_centre_points_equal_the_dense_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 16, 16, generator=g) * 3
    target = torch.rand(3, 1, 16, 16, generator=g)  # soft targets, as HQSeg masks / 255
    bce, dice = point_mask_losses(logits, target, _pixel_centres(3, 16, 16))
    dense_bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1).mean()
    p, y = logits.sigmoid().flatten(1), target.flatten(1)
    dense_dice = (1 - (2 * (p * y).sum(1) + 1) / (p.sum(1) + y.sum(1) + 1)).mean()
    assert torch.allclose(bce, dense_bce, atol=1e-6) and torch.allclose(dice, dense_dice, atol=1e-6)


def test_targets_at_other_resolution_are_sampled_in_the_same_frame():
    # A 4x finer target (as the 1024 GT vs 256 logits) that is constant per logit pixel gives the same losses.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    coarse = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    fine = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    coords = _pixel_centres(2, 8, 8)
    a, b = point_mask_losses(logits, coarse, coords), point_mask_losses(logits, fine, coords)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_constant_case_by_hand():
    n = 500
    logits = torch.full((2, 1, 8, 8), 2.0)
    target = torch.full((2, 1, 32, 32), 0.25)
    bce, dice = gt_mask_losses(logits, target, num_points=n)
    s = 1 / (1 + math.exp(-2.0))
    want_bce = -(0.25 * math.log(s) + 0.75 * math.log(1 - s))
    want_dice = 1 - (2 * n * s * 0.25 + 1) / (n * s + n * 0.25 + 1)
    assert abs(float(bce) - want_bce) < 1e-5 and abs(float(dice) - want_dice) < 1e-5


def test_importance_points_come_from_the_uncertain_region():
    logits = torch.full((1, 1, 32, 32), 20.0)
    logits[..., 8:24, 8:24] = 0.0  # with its bilinear rim ~28 % of the area: ~850 of the 3000 candidates
    g = torch.Generator().manual_seed(2)
    coords = uncertain_point_coords(logits, 1000, oversample=3.0, importance=0.75, generator=g)
    assert coords.shape == (1, 1000, 2) and coords.min() >= 0 and coords.max() <= 1
    uncertain = point_sample(logits, coords)[0, 0].abs() < 20
    assert uncertain[:750].all()  # the 750 importance points: the most uncertain candidates
    assert 0.15 < uncertain[750:].float().mean() < 0.45  # the 250 uniform points follow the area share
    uniform = uncertain_point_coords(logits, 1000, importance=0.0, generator=g)
    assert 0.15 < (point_sample(logits, uniform)[0, 0].abs() < 20).float().mean() < 0.45


def test_gradients_are_finite_for_extreme_logits_and_only_reach_the_logits():
    logits = torch.tensor([-1e4, 1e4, 0.0, 50.0]).repeat(16).view(1, 1, 8, 8).requires_grad_(True)
    target = torch.zeros(1, 1, 32, 32)
    target[..., :16, :] = 1.0
    torch.manual_seed(0)
    bce, dice = gt_mask_losses(logits, target, num_points=256)
    (bce + dice).backward()
    assert torch.isfinite(bce) and torch.isfinite(dice) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
