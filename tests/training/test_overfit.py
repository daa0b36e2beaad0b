"""Overfitting one fixed batch: the step-1 and step-3 losses must fall by a stated factor within 40 steps.

A fixed batch = 2 images, batch 2, no shuffle, one prompt kind, one decoder iteration (no random clicks).
Factors measured on the debug models: step 1 falls ~6x, step 3 ~2.2x in 40 steps; the thresholds leave margin.
"""

from __future__ import annotations

import pytest
import torch

from tests.training.conftest import STUDENT, cli_args, invoke, read_metrics, write_sa1b

FIXED = ["--set", "data.shuffle=false", "--set", "train.warmup_epochs=0", "--set", "train.epochs=100",
         "--set", "optim.clip_grad=0", "--set", "train.keep_checkpoints=1"]


@pytest.fixture(scope="module")
def two_images(assets, tmp_path_factory) -> dict:
    return {**assets, "data": write_sa1b(tmp_path_factory.mktemp("fixed") / "sa1b", count=2, seed=7)}


@pytest.mark.parametrize(("step", "lr", "factor"), [("1", 1.0, 3.0), ("3", 2.0, 1.5)])
def test_loss_falls_on_a_fixed_batch(step, lr, factor, two_images, tmp_path):
    extra = [*FIXED, "--set", f"optim.base_lr={lr}", "--set", f"optim.min_lr={lr}"]
    if step == "3":
        from edgesam_core.models import build_sam

        torch.manual_seed(11)
        init = tmp_path / "init.pth"
        torch.save({"model": build_sam(STUDENT).state_dict()}, init)
        extra += ["--init", str(init), "--set", "prompts.types=[point]", "--set", "prompts.decode_iters=1"]
    r = invoke(cli_args(step, two_images, tmp_path, *extra, steps=40))
    assert r.exit_code == 0, r.output + repr(r.exception)
    losses = [x["loss"] for x in read_metrics(tmp_path / f"step{step}") if "event" not in x]
    assert len(losses) == 40
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert first / last >= factor, (first, last, losses)
