"""Losses, refinement clicks, optimizer groups and the LR schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgesam_core.training.losses import (
    embedding_mse_loss,
    mask_bce_loss,
    mask_dice_loss,
    mask_distill_losses,
    padding_valid_mask,
)
from edgesam_core.training.optim import CosineSchedule, param_groups
from edgesam_core.training.refinement_clicks import choose_prompt_kind, sample_refinement_points


def test_embedding_mse_ignores_padding_only():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sizes = torch.tensor([[64, 128], [128, 32]])  # image 0: top half valid; image 1: left quarter
    base = embedding_mse_loss(s, t, sizes, 128)
    s2 = s.clone()
    s2[0, :, 4:, :] += 100.0  # padding of image 0
    s2[1, :, :, 2:] += 100.0  # padding of image 1
    assert embedding_mse_loss(s2, t, sizes, 128) == pytest.approx(float(base), rel=1e-6)
    expected = ((s[0, :, :4] - t[0, :, :4]) ** 2).mean() / 2 + ((s[1, :, :, :2] - t[1, :, :, :2]) ** 2).mean() / 2
    assert float(base) == pytest.approx(float(expected), rel=1e-5)
    s3 = s.clone()
    s3[0, :, :4, :] += 1.0
    assert embedding_mse_loss(s3, t, sizes, 128) > base


def test_bce_and_dice_follow_the_spec_formulas():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 2, 4, 4), (torch.rand(3, 2, 4, 4) > 0.5).float()
    valid = torch.rand(3, 1, 4, 4)
    v = valid.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected_bce = ((bce * v).flatten(1).sum(1) / v.flatten(1).sum(1)).mean()
    p, y = torch.sigmoid(logits) * v, target * v
    inter, total = (p * y).flatten(2).sum(-1), p.flatten(2).sum(-1) + y.flatten(2).sum(-1)
    expected_dice = (1 - (2 * inter + 1) / (total + 1)).mean()
    assert float(mask_bce_loss(logits, target, valid)) == pytest.approx(float(expected_bce), rel=1e-6)
    assert float(mask_dice_loss(logits, target, valid)) == pytest.approx(float(expected_dice), rel=1e-6)
    teacher = torch.where(target > 0, 3.0, -3.0)
    b, d = mask_distill_losses(logits * 4, teacher, valid, temperature=4.0)
    assert float(b) == pytest.approx(float(expected_bce), rel=1e-5)
    assert float(d) == pytest.approx(float(expected_dice), rel=1e-5)


def test_padding_valid_mask_is_soft_at_the_border():
    # Bilinear 128 -> 8 (no antialias, as upstream) samples rows 16i+7 and 16i+8: a border at 104 is halfway.
    m = padding_valid_mask(torch.tensor([[104, 128]]), 128, 8)
    assert m.shape == (1, 1, 8, 8)
    assert float(m[0, 0, 0, 0]) == 1.0 and float(m[0, 0, 7, 0]) == 0.0
    assert float(m[0, 0, 6, 0]) == pytest.approx(0.5)


def test_refinement_clicks_come_from_the_disagreement_and_are_labelled_by_the_teacher():
    low = 16
    student = torch.full((3, 1, low, low), -5.0)
    teacher = torch.full((3, 1, low, low), -5.0)
    teacher[0, 0, 2:6, 3:7] = 5.0  # prompt 0: student misses 16 px -> positive click inside
    student[1, 0, 10:14, 10:15] = 5.0  # prompt 1: 20 px false positive -> negative click inside
    teacher[2, 0, 0, 0:3] = 5.0  # prompt 2: only 3 px disagree -> ignored click
    valid = torch.ones(3, 1, low, low)
    g = torch.Generator().manual_seed(0)
    coords, labels = sample_refinement_points(student, teacher, valid, torch.zeros(3, 1), 64, 1, 10, g)
    assert coords.shape == (3, 1, 2) and labels.tolist() == [[1.0], [0.0], [-2.0]]
    x0, y0 = coords[0, 0] / 4
    assert 3 <= x0 < 7 and 2 <= y0 < 6 and float(x0) == int(x0)
    x1, y1 = coords[1, 0] / 4
    assert 10 <= x1 < 15 and 10 <= y1 < 14
    assert coords[2].abs().sum() == 0


def test_refinement_uses_the_teacher_best_channel_and_valid_area():
    student = torch.full((1, 3, 8, 8), -5.0)
    teacher = torch.full((1, 3, 8, 8), -5.0)
    teacher[0, 1, :, :4] = 5.0  # channel 1 disagrees on the left half
    teacher[0, 2] = 5.0  # channel 2 disagrees everywhere
    valid = torch.zeros(1, 1, 8, 8)
    valid[..., :, :2] = 1.0
    for seed in range(5):
        c, lab = sample_refinement_points(student, teacher, valid, torch.tensor([[0.1, 0.9, 0.2]]), 32, 1, 10,
                                          torch.Generator().manual_seed(seed))
        assert float(lab) == 1.0 and c[0, 0, 0] / 4 < 2  # inside the valid columns of channel 1


def test_prompt_kind_is_shared_across_ranks_and_varies_over_steps():
    kinds = [choose_prompt_kind(["box", "point"], 0, s) for s in range(40)]
    assert kinds == [choose_prompt_kind(["box", "point"], 0, s) for s in range(40)]
    assert 8 < kinds.count("box") < 32


def test_no_weight_decay_on_1d_params_biases_and_dyt():
    from edgesam_core.models import build_sam

    model = build_sam("edge_sam_dyt_debug")
    groups = param_groups(model, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    for p in groups[1]["params"]:
        assert p.ndim <= 1 or names[id(p)].endswith(".bias")
    assert all(p.ndim >= 2 and not names[id(p)].endswith(".bias") for p in groups[0]["params"])
    alphas = [p for n, p in model.named_parameters() if n.endswith(".alpha")]
    assert alphas and not any(id(p) in decay for p in alphas)
    assert id(model.mask_decoder.mask_tokens.weight) in decay
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert param_groups(frozen, 0.05) == []


def test_cosine_schedule_with_per_iteration_warmup():
    s = CosineSchedule(base_lr=1.0, min_lr=0.1, warmup_lr=0.01, warmup_steps=10, total_steps=100)
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.lr_at(10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.1)))
    assert s.lr_at(100) == pytest.approx(0.1)
    lrs = [s.lr_at(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
