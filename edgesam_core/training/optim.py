"""AdamW parameter groups, LR scaling and the per-iteration cosine schedule with linear warm-up.

LR scaling (upstream, spec §3.1): the configured ``base_lr``, ``min_lr`` and ``warmup_lr`` are values for a
reference global batch of ``lr_scale_divisor`` images (512; the HQ step uses 4). The effective value is
``lr * batch_size * world_size * accumulation_steps / lr_scale_divisor``; e.g. step 1 with batch 96 on one
GPU: ``0.1 * 96 / 512 = 0.01875``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgesam_core.config.schema import OptimConfig


def scaled_lr(lr: float, batch_size: int, world_size: int, accumulation_steps: int, divisor: float) -> float:
    """Scale a reference learning rate to the real global batch (see module docstring)."""
    return lr * batch_size * world_size * accumulation_steps / divisor


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over trainable parameters: decayed (>= 2-D, not a bias) and not decayed.

    Every 1-D parameter (BN/LayerNorm affine, all DyT ``alpha``/``weight``/``bias``) and every bias gets no
    weight decay; 2-D embeddings such as ``mask_tokens`` do decay, as upstream.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (call after freezing and after every module exists)."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        from edgesam_core.errors import TrainingError

        raise TrainingError("No trainable parameters: check the step's freezing rules and the student variant.")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warm-up from ``warmup_lr`` to ``base_lr`` over ``warmup_steps``, then cosine to ``min_lr``.

    Matches timm's ``CosineLRScheduler(t_initial=total, warmup_t=warmup, cycle_limit=1)`` stepped per
    iteration: the cosine runs over the whole ``total_steps`` with ``t`` counted from 0, warm-up overriding
    the first ``warmup_steps`` iterations.
    """

    base_lr: float
    min_lr: float
    warmup_lr: float
    warmup_steps: int
    total_steps: int

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        t = min(step, self.total_steps) / max(self.total_steps, 1)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's LR for ``step`` and return it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
