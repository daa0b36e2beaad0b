"""``export-onnx --task NAME``: a decoder graph with a learned task prompt built in.

``X_task_<NAME>_decoder.onnx`` takes only ``image_embeddings`` (what ``X_encoder.onnx`` returns) and returns
``scores`` [1, 1] and ``masks`` [1, 1, h, w] (low-res logits): with the encoder, an image in and the task's mask
out, no prompt on the device. Judged like every export: against the float64 model on the embedding of a
photo-like image, within the fp32 noise floor (fp32 PyTorch's distance, plain and with runtime-like noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesam_core.errors import ExportParityError, InputError


class TaskDecoderForExport(nn.Module):
    """``image_embeddings -> (scores, masks)`` for one task prompt (its tensors are constants of the graph)."""

    def __init__(self, sam: Any, prompt: Any) -> None:
        super().__init__()
        self.sam = sam
        self.prompt = prompt

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from edgesam_core.models.task_prompt import decode_task

        masks, iou = decode_task(self.sam, image_embeddings, self.prompt)
        return iou, masks


@dataclass
class TaskExportResult:
    """The written graph, its sidecar and the parity report."""

    path: Path
    sidecar: Path
    parity: Any


def task_prompt(tasks_file: str | Path, name: str, model: Any) -> Any:
    """The :class:`TaskPrompt` of task ``name`` from ``tasks_file``, checked to belong to ``model``'s decoder
    weights.

    Raises:
        InputError: no such file or task, or a task trained for other weights.
    """
    from edgesam_core.models.task_prompt import TaskPrompt, load_task_file, prompt_path_fingerprint

    try:
        tasks = load_task_file(tasks_file)
    except ValueError as exc:
        raise InputError(f"{exc}; train a task with 'edgesam finetune --train prompt --task NAME'") from exc
    if name not in tasks:
        have = ", ".join(sorted(tasks)) or "none"
        raise InputError(f"{tasks_file} has no task {name!r} (tasks: {have}); pass --tasks FILE of the right run")
    if tasks[name].get("fingerprint") != prompt_path_fingerprint(model):
        raise InputError(f"task {name!r} in {tasks_file} was trained for other decoder weights than this "
                         "checkpoint's; export the checkpoint it was trained on")
    try:
        return TaskPrompt.from_entry(tasks[name])
    except ValueError as exc:
        raise InputError(f"{tasks_file}: task {name!r}: {exc}; train it again") from exc


def export_task_decoder(model: Any, prompt: Any, name: str, out_dir: Path, stem: str, opset: int,
                        tolerance: float, embedding: torch.Tensor) -> TaskExportResult:
    """Trace the task decoder, check it in ONNX Runtime against the float64 model, then move it into place.

    Raises:
        ExportParityError: the graph is farther from the float64 model than fp32 noise allows (file kept).
    """
    import copy

    from edgesam_core.export import parity as P
    from edgesam_core.export.onnx_export import torch_onnx_export
    from edgesam_core.export.sidecar import atomic_write_json, sidecar_path
    from edgesam_core.inference.onnx_predictor import create_session
    from edgesam_core.models.task_prompt import decode_task

    path = Path(out_dir) / f"{stem}_task_{name}_decoder.onnx"
    staged = path.with_name(f".{path.name}.partial")
    try:
        with torch.no_grad():
            torch_onnx_export(TaskDecoderForExport(model, prompt).eval(), (embedding,), staged, ["image_embeddings"],
                              ["scores", "masks"], {}, opset)
            scores, masks = create_session(staged).run(None, {"image_embeddings": embedding.numpy()})
            model64 = copy.deepcopy(model).double().eval()
            noisy = P.with_runtime_noise(model)
            prompt64 = copy.deepcopy(prompt).double()
            ref = [t.numpy() for t in decode_task(model64, embedding.double(), prompt64)]
            f32 = [t.numpy() for t in decode_task(model, embedding, prompt)]
            f32n = [t.numpy() for t in decode_task(noisy, embedding, prompt)]
        report = P.ParityReport(tolerance)
        report.add(f"task_{name}", "photo-like image", "masks", masks, ref[0], fp32=[f32[0], f32n[0]])
        report.add(f"task_{name}", "photo-like image", "scores", scores, ref[1], fp32=[f32[1], f32n[1]])
        sidecar = atomic_write_json(sidecar_path(path), {
            "format": "edgesam-onnx-sidecar/1", "role": "task_decoder", "task": name, "file": path.name,
            "model_type": model.variant, "img_size": int(model.img_size), "opset": opset,
            "inputs": ["image_embeddings"], "outputs": ["scores", "masks"], "parity": report.to_dict()})
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)
    if not report.passed:
        raise ExportParityError(f"the task decoder differs from the float64 model beyond fp32 noise: "
                                f"{report.describe(report.worst)}; file kept: {path} (see {sidecar.name})")
    return TaskExportResult(path, sidecar, report)


def export_task(checkpoint: str | Path, model_type: str, name: str, tasks_file: str | Path | None,
                out_dir: str | Path | None, opset: int, tolerance: float) -> TaskExportResult:
    """``export-onnx CHECKPOINT --task NAME``: build the model, read the task (``tasks_file``, default ``tasks.pt``
    beside the checkpoint) and export its decoder next to the encoder (see :func:`export_task_decoder`)."""
    from edgesam_core.export.onnx_export import prepare_image
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.models import build_sam

    checkpoint = Path(checkpoint)
    model = build_sam(model_type, checkpoint).eval()
    if model.is_hq:
        raise InputError("task prompts are trained for plain (non-HQ) models; export the checkpoint they were "
                         "trained on")
    prompt = task_prompt(tasks_file or checkpoint.parent / "tasks.pt", name, model)
    with torch.no_grad():
        embedding = model.encode_image(prepare_image(model, synthetic_image()))
    folder = Path(out_dir) if out_dir else checkpoint.parent
    folder.mkdir(parents=True, exist_ok=True)
    return export_task_decoder(model, prompt, name, folder, checkpoint.stem, opset, tolerance, embedding)
