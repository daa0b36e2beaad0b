"""Engine semantics: gradient accumulation equals the larger batch; autocast resolution per device."""

from __future__ import annotations

import torch

from tests.training.conftest import cli_args, invoke


def test_accumulating_two_micro_batches_equals_one_batch_of_two(assets, tmp_path):
    # BatchNorm on running statistics so that the micro-batch split does not change the function.
    common = ["--set", "train.eval_bn=true", "--set", "train.warmup_epochs=0", "--set", "data.shuffle=false",
              "--set", "optim.clip_grad=0"]
    big = invoke(cli_args("1", assets, tmp_path / "big", *common, steps=2))
    acc = invoke(cli_args("1", assets, tmp_path / "acc", *common, "--set", "train.batch_size=1",
                          "--set", "train.accumulation_steps=2", steps=2))
    assert big.exit_code == 0 and acc.exit_code == 0, acc.output + repr(acc.exception)
    a = torch.load(tmp_path / "big" / "step1" / "final.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "acc" / "step1" / "final.pth", weights_only=True)["model"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst


def test_autocast_is_bf16_on_cuda_by_default_and_off_on_cpu():
    from edgesam_core.training.engine import resolve_amp

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_amp("auto", cuda) is torch.bfloat16 and resolve_amp("bf16", cuda) is torch.bfloat16
    assert resolve_amp("fp16", cuda) is torch.float16 and resolve_amp("off", cuda) is None
    assert all(resolve_amp(m, cpu) is None for m in ("auto", "bf16", "fp16", "off"))
