"""`edgesam distill`: run one step of the EdgeSAM-DyT distillation curriculum."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgesam_cli.console import err_console, out_console

EXAMPLES = """
[b]Examples[/b]

  edgesam distill --step 0 --data-root data/sa1b --teacher-checkpoint weights/sam_vit_h_4b8939.pth

  edgesam distill --step 1 --data-root data/sa1b --teacher-checkpoint weights/sam_vit_h_4b8939.pth
      --init weights/repvit_m0_9_distill_450e.pth

  torchrun --nproc_per_node 4 -m edgesam_cli distill --step joint --data-root data/sa1b
      --teacher-checkpoint weights/sam_vit_h_4b8939.pth

  edgesam distill --step hq --data-root datasets/hqseg44k --teacher-checkpoint weights/sam_hq_vit_h.pth
      --set train.batch_size=8 --auto-resume
"""


class StepChoice(str, Enum):
    s0 = "0"
    s1 = "1"
    s2 = "2"
    s3 = "3"
    joint = "joint"
    hq = "hq"


def command(
    step: Annotated[StepChoice, typer.Option(
        "--step", help="Curriculum step: 0 (teacher cache), 1, 2, 3, joint, hq.")],
    data_root: Annotated[Optional[Path], typer.Option(
        "--data-root", help="SA-1B style dataset folder; for --step hq the HQSeg-44K folder.")] = None,
    teacher_checkpoint: Annotated[Optional[Path], typer.Option(
        "--teacher-checkpoint", help="SAM ViT-H (or HQ-SAM for --step hq) weights.",
        exists=True, dir_okay=False)] = None,
    init: Annotated[Optional[Path], typer.Option(
        "--init", help="Student initial weights (default: the previous step's final.pth).",
        exists=True, dir_okay=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run root (default runs/distill).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML file overriding the step preset.", exists=True, dir_okay=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config key, e.g. --set train.epochs=5 (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue exactly from a checkpoint of this step.", exists=True, dir_okay=False)] = None,
    auto_resume: Annotated[bool, typer.Option(
        "--auto-resume", help="Continue from the latest checkpoint, if any.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(
        "--max-steps", min=1, help="Stop after N optimizer steps.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Student variant (default from the preset).")] = None,
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="Teacher variant (default from the preset).")] = None,
) -> None:
    """Distil EdgeSAM-DyT from SAM, one curriculum step at a time (presets hold upstream's hyper-parameters)."""
    if resume is not None and auto_resume:
        raise typer.BadParameter("use either --resume PATH or --auto-resume, not both", param_hint="--resume")
    from edgesam_core.config import load_config

    extra: dict[str, object] = {}
    for key, value in (("data.root", data_root), ("model.teacher_checkpoint", teacher_checkpoint),
                       ("model.init", init), ("out", out), ("train.max_steps", max_steps), ("device", device),
                       ("model.student", model), ("model.teacher", teacher)):
        if value is not None:
            extra[key] = str(value) if isinstance(value, Path) else value
    cfg = load_config(step.value, config, set_ or [], extra)

    from edgesam_cli.console import RichProgress
    from edgesam_core.training.distill import run

    with RichProgress() as progress:
        result = run(cfg, progress, "auto" if auto_resume else (str(resume) if resume else None))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    if step.value == "0":
        out_console.print(f"teacher cache: {result.final}", soft_wrap=True, highlight=False)
    else:
        err_console.print(f"step {result.step}: {result.steps_done} optimizer steps, "
                          f"{result.skipped_steps} skipped", soft_wrap=True, highlight=False)
        out_console.print(str(result.final), soft_wrap=True, highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n\n" + EXAMPLES
