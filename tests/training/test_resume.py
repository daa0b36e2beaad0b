"""Exact resume (same batches, same random prompt draws) and non-finite handling through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import STUDENT, cli_args, invoke, read_metrics


def _final(out: Path, step: str) -> dict[str, torch.Tensor]:
    return torch.load(out / f"step{step}" / "final.pth", map_location="cpu", weights_only=True)["model"]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def step3_init(tmp_path_factory) -> Path:
    from edgesam_core.models import build_sam

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("init") / "step2_like.pth"
    torch.save({"model": build_sam(STUDENT).state_dict()}, path)
    return path


DET = ["--set", "train.deterministic=true", "--set", "train.warmup_epochs=0.5"]


def test_step1_resume_at_epoch_boundary_is_exact(assets, tmp_path):
    straight = invoke(cli_args("1", assets, tmp_path / "a", *DET, steps=4))
    assert straight.exit_code == 0, straight.output + repr(straight.exception)
    half = invoke(cli_args("1", assets, tmp_path / "b", *DET, steps=2))
    assert half.exit_code == 0, half.output
    ckpt = tmp_path / "b" / "step1" / "checkpoints" / "ckpt_step_00000002.pth"
    rest = invoke(cli_args("1", assets, tmp_path / "b", *DET, "--resume", str(ckpt), steps=4))
    assert rest.exit_code == 0, rest.output + repr(rest.exception)
    _assert_identical(_final(tmp_path / "a", "1"), _final(tmp_path / "b", "1"))


def test_step3_resume_mid_epoch_with_random_prompts_is_exact(assets, tmp_path, step3_init):
    # Step 3 draws prompt kinds and refinement clicks at random: resume must replay the RNG exactly.
    common = [*DET, "--init", str(step3_init), "--set", "data.max_prompts=3"]
    straight = invoke(cli_args("3", assets, tmp_path / "a", *common, steps=3))
    assert straight.exit_code == 0, straight.output + repr(straight.exception)
    first = invoke(cli_args("3", assets, tmp_path / "b", *common, steps=1))
    assert first.exit_code == 0, first.output
    rest = invoke(cli_args("3", assets, tmp_path / "b", *common, "--auto-resume", steps=3))
    assert rest.exit_code == 0, rest.output + repr(rest.exception)
    _assert_identical(_final(tmp_path / "a", "3"), _final(tmp_path / "b", "3"))
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "step3") if "event" not in r]
    assert steps == [1, 2, 3]


def _nan_after(monkeypatch, bad_calls: set[int] | None = None, from_call: int | None = None) -> list[int]:
    import edgesam_core.training.steps as steps

    real = steps.embedding_mse_loss
    calls = [0]

    def patched(*args, **kwargs):
        n = calls[0]
        calls[0] += 1
        loss = real(*args, **kwargs)
        bad = (bad_calls is not None and n in bad_calls) or (from_call is not None and n >= from_call)
        return loss * float("nan") if bad else loss

    monkeypatch.setattr(steps, "embedding_mse_loss", patched)
    return calls


def test_single_nonfinite_loss_is_skipped_and_logged(assets, tmp_path, monkeypatch):
    _nan_after(monkeypatch, bad_calls={1})
    r = invoke(cli_args("1", assets, tmp_path, steps=3))
    assert r.exit_code == 0, r.output + repr(r.exception)
    records = read_metrics(tmp_path / "step1")
    events = [x for x in records if x.get("event") == "nonfinite_skip"]
    assert len(events) == 1 and events[0]["step"] == 1
    assert [x["step"] for x in records if "event" not in x] == [1, 2, 3]
    assert "1 skipped" in r.output


def test_nonfinite_in_a_row_stops_cleanly_keeping_last_good_checkpoint(assets, tmp_path, monkeypatch):
    from edgesam_core.errors import TrainingError

    _nan_after(monkeypatch, from_call=2)
    args = cli_args("1", assets, tmp_path, "--set", "train.max_nonfinite_in_a_row=3", "--set",
                    "train.save_every_steps=1", steps=10)
    r = invoke(args)
    assert r.exit_code != 0
    assert isinstance(r.exception, TrainingError) and r.exception.exit_code == 1
    msg = str(r.exception)
    assert "\n" not in msg and "3 non-finite" in msg and "ckpt_step_00000002.pth" in msg
    ckpt_dir = tmp_path / "step1" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt_step_00000001.pth", "ckpt_step_00000002.pth"]
    payload = torch.load(ckpt_dir / "ckpt_step_00000002.pth", weights_only=True)
    assert payload["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())
    assert not (tmp_path / "step1" / "final.pth").exists()
    skips = [x for x in read_metrics(tmp_path / "step1") if x.get("event") == "nonfinite_skip"]
    assert [x["in_a_row"] for x in skips] == [1, 2, 3]
    json.dumps(skips)  # the log stays valid JSON


def test_auto_resume_falls_back_past_a_corrupt_newest_checkpoint(assets, tmp_path):
    """The newest checkpoint is truncated (a crash mid-copy, a full disk): --auto-resume says so, resumes from the
    one before, and the run still ends exactly where an uninterrupted run does."""
    save = ["--set", "train.save_every_steps=1", "--set", "train.keep_checkpoints=5"]
    straight = invoke(cli_args("1", assets, tmp_path / "a", *DET, *save, steps=4))
    assert straight.exit_code == 0, straight.output + repr(straight.exception)
    half = invoke(cli_args("1", assets, tmp_path / "b", *DET, *save, steps=2))
    assert half.exit_code == 0, half.output
    ckpt_dir = tmp_path / "b" / "step1" / "checkpoints"
    newest = ckpt_dir / "ckpt_step_00000002.pth"
    assert (ckpt_dir / "ckpt_step_00000001.pth").is_file()
    newest.write_bytes(newest.read_bytes()[:1000])
    rest = invoke(cli_args("1", assets, tmp_path / "b", *DET, *save, "--auto-resume", steps=4))
    assert rest.exit_code == 0, rest.output + repr(rest.exception)
    assert "skipping ckpt_step_00000002.pth" in rest.output and "resumed from" in rest.output
    _assert_identical(_final(tmp_path / "a", "1"), _final(tmp_path / "b", "1"))


def test_resume_from_an_unsafe_pickle_names_the_object_and_never_suggests_disabling_the_safe_load(assets, tmp_path):
    import datetime

    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "train_state": {}, "when": datetime.datetime(2026, 1, 1)}, evil)
    from edgesam_core.errors import CheckpointError

    result = invoke(cli_args("1", assets, tmp_path / "run", "--resume", str(evil), steps=1))
    # The in-process runner hands back the exception; the `edgesam` entry point turns it into one line, exit 2.
    assert isinstance(result.exception, CheckpointError) and result.exception.exit_code == 2
    message = str(result.exception)
    assert "datetime" in message and "weights_only" not in message and "weights_only" not in result.output
