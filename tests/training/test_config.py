"""Distillation config: presets hold upstream's values, every unknown key is reported with a suggestion,
``--set`` values are typed, and loading never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgesam_core.config import load_config, valid_keys
from edgesam_core.errors import ConfigError


def test_presets_hold_upstream_hyper_parameters():
    s1, s2, s3, joint, hq = (load_config(s) for s in ("1", "2", "3", "joint", "hq"))
    assert (s1.train.epochs, s1.train.warmup_epochs, s1.train.batch_size) == (20, 5, 96)
    assert (s1.optim.base_lr, s1.optim.weight_decay, s1.optim.clip_grad) == (0.1, 0.01, 5.0)
    assert (s2.model.student, s2.optim.base_lr, s2.optim.clip_grad) == ("edge_sam_dyt_frozen_mask", 3.2e-3, 0.01)
    assert (s3.train.epochs, s3.optim.base_lr, s3.train.eval_bn) == (40, 3.2e-2, True)
    assert (joint.train.warmup_epochs, joint.optim.min_lr) == (1, 3.2e-4)
    assert (hq.model.teacher, hq.optim.lr_scale_divisor, hq.optim.clip_grad, hq.loss.temperature) == (
        "vit_h_hq", 4.0, 0.005, 4.0)


def test_effective_lr_matches_upstream_scaling():
    from edgesam_core.training.optim import scaled_lr

    assert scaled_lr(0.1, 96, 1, 1, 512) == pytest.approx(0.01875)
    assert scaled_lr(3.2e-2, 16, 1, 1, 512) == pytest.approx(1e-3)
    assert scaled_lr(3.2e-4, 16, 1, 1, 4) == pytest.approx(1.28e-3)


def test_every_unknown_key_reported_with_suggestion(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("train:\n  epoch: 3\noptim:\n  clip_gard: 1.0\n")
    with pytest.raises(ConfigError) as err:
        load_config("3", cfg_file, ["train.batchsize=4", "train.amp=bf61"])
    msg = str(err.value)
    assert "\n" not in msg
    for bad, good in (("train.epoch", "train.epochs"), ("optim.clip_gard", "optim.clip_grad"),
                      ("train.batchsize", "train.batch_size"), ("bf61", "bf16")):
        assert bad in msg and good in msg, msg
    assert "4 problem" in msg


def test_set_overrides_are_typed_and_win():
    cfg = load_config("1", overrides=["train.epochs=3", "optim.base_lr=1e-3", "train.eval_bn=true",
                                      "model.init=null", "optim.betas=[0.8, 0.9]", "prompts.types=box"],
                      extra={"train.epochs": 7, "data.root": "/x"})
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.base_lr == 1e-3 and cfg.train.eval_bn is True and cfg.model.init is None
    assert cfg.optim.betas == (0.8, 0.9) and cfg.prompts.types == ["box"] and cfg.data.root == "/x"
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        load_config("1", overrides=["train.epochs=2.5"])
    assert "train.max_nonfinite_in_a_row" in valid_keys()


def test_config_loading_is_torch_free():
    code = "import sys; from edgesam_core.config import load_config; load_config('hq'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
