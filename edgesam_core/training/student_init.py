"""Student initialisation and freezing per curriculum step (spec §3.6-3.8, fixes of §9.7, §9.12, §9.17).

Unlike upstream's prefix-filtered, ``strict=False`` loading, every copy here is checked: keys are matched
after normalising the layout (RepViT ImageNet files, encoder-only step-1 files and full prefixed files all
work), and a file that would load nothing, or whose shapes disagree, raises a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from edgesam_core.errors import CheckpointMismatchError

ENCODER, PROMPT, DECODER = "image_encoder.", "prompt_encoder.", "mask_decoder."
# HQ-only decoder modules of the student (trained in the HQ step).
HQ_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
# What upstream copies from the HQ-SAM teacher into the student's HQ modules (spec §3.8).
HQ_FROM_TEACHER = ("mask_decoder.hf_token.", "mask_decoder.embedding_encoder.")

# Which parts of the --init file each step takes; the rest comes from the teacher or stays as built.
INIT_PARTS: dict[str, tuple[str, ...]] = {
    "1": (ENCODER,),
    "2": (ENCODER,),
    "3": (ENCODER,),
    "joint": (ENCODER, DECODER),
    "hq": (ENCODER, DECODER),
}
# Which parts train; everything else is frozen (and BatchNorm put in eval mode where the encoder is frozen).
TRAINED_PARTS: dict[str, tuple[str, ...]] = {
    "1": (ENCODER,),
    "2": (ENCODER,),
    "3": (DECODER,),
    "joint": (ENCODER, DECODER),
    "hq": tuple(f"{DECODER}{m}." for m in HQ_MODULES),
}


def normalise_init_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map any supported layout to full model keys.

    Full files (``image_encoder.*``...) pass through; encoder-only files (upstream step 1, RepViT ImageNet with
    ``features.*`` and a ``classifier.*`` head) get the ``image_encoder.`` prefix, the classifier dropped.
    """
    if any(k.startswith((ENCODER, PROMPT, DECODER)) for k in state):
        return dict(state)
    return {f"{ENCODER}{k}": v for k, v in state.items() if not k.startswith(("classifier.", "head.", "dist_head."))}


def copy_matching(model: nn.Module, source: dict[str, torch.Tensor], prefixes: Iterable[str],
                  what: str, skip_shape_mismatch: bool = False) -> list[str]:
    """Copy ``source`` entries under ``prefixes`` into ``model`` (name and shape must match).

    Returns the copied keys. Raises CheckpointMismatchError when nothing under a prefix matches, or when
    shapes disagree (unless ``skip_shape_mismatch``, used for teacher modules of different width).
    """
    own = model.state_dict()
    copied: list[str] = []
    mismatched: list[str] = []
    for prefix in prefixes:
        keys = [k for k in own if k.startswith(prefix) and k in source]
        if not keys:
            raise CheckpointMismatchError(
                f"{what} has no '{prefix}*' weights that fit the student ({sum(k.startswith(prefix) for k in own)} "
                f"expected, e.g. {next((k for k in own if k.startswith(prefix)), '?')}); is it the right file?"
            )
        for k in keys:
            if own[k].shape != source[k].shape:
                mismatched.append(f"{k} {tuple(source[k].shape)} vs {tuple(own[k].shape)}")
                continue
            own[k].copy_(source[k].to(own[k].dtype))
            copied.append(k)
    if mismatched and not skip_shape_mismatch:
        raise CheckpointMismatchError(
            f"{what}: {len(mismatched)} shape mismatch(es), e.g. {mismatched[0]}; wrong variant for this file?"
        )
    return copied


def initialise_student(student: nn.Module, step: str, init: str | Path | None,
                       teacher_state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Load the step's initial weights into ``student`` in place (before the optimizer is built).

    * prompt encoder <- teacher (every step, upstream INIT_FROM_TEACHER);
    * mask decoder <- teacher for steps 1-3 (LayerNorm weight/bias into DyT weight/bias, alpha stays 0.5);
    * ``init`` parts per :data:`INIT_PARTS` (step 1 may have none: random encoder);
    * HQ: ``hf_token`` and ``embedding_encoder`` <- HQ-SAM teacher, the rest of the HQ modules as built.

    Returns counts of copied tensors per source, for the log.
    """
    counts = {"teacher": 0, "init": 0}
    with torch.no_grad():
        counts["teacher"] += len(copy_matching(student, teacher_state, (PROMPT,), "teacher prompt encoder"))
        if step in ("1", "2", "3"):
            counts["teacher"] += len(copy_matching(student, teacher_state, (DECODER,), "teacher mask decoder",
                                                   skip_shape_mismatch=True))
        if init is not None:
            from edgesam_core.models.checkpoint import read_checkpoint

            source = normalise_init_keys(read_checkpoint(init))
            counts["init"] = len(copy_matching(student, source, INIT_PARTS[step], f"--init {init}"))
        if step == "hq":
            counts["teacher"] += len(copy_matching(student, teacher_state, HQ_FROM_TEACHER, "HQ-SAM teacher"))
    return counts


def freeze_for_step(student: nn.Module, step: str) -> list[str]:
    """Set ``requires_grad`` per :data:`TRAINED_PARTS`; returns the names of trainable parameters."""
    trained = TRAINED_PARTS[step]
    names = []
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith(trained))
        if p.requires_grad:
            names.append(name)
    return names


def set_train_mode(student: nn.Module, step: str, eval_bn: bool) -> None:
    """``train()`` on the trained parts only; frozen parts and (with ``eval_bn``) every BatchNorm stay in eval
    mode, so frozen BatchNorm running statistics never drift (upstream step 3 let them drift, §9.12)."""
    student.eval()
    trained = TRAINED_PARTS[step]
    for name, module in student.named_modules():
        if name and (name + ".").startswith(trained):
            module.train()
    if eval_bn:
        for module in student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
