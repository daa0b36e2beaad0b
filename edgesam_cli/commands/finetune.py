"""`edgesam finetune`: adapt the mask decoder to your own masks (encoder frozen, embeddings cached)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesam_cli.options import CheckpointArg, DeviceOpt, RecognisedVariantOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# a mask folder (images/ + masks/<stem>.png or masks/<stem>/<class>_<k>.png), 20 % held out[/dim]
  edgesam finetune --data my_parts/ weights/edge_sam_dyt.pth --out ft/

  [dim]# COCO instances (polygons or RLE; images beside the JSON or in images/), more epochs[/dim]
  edgesam finetune --data annotations.json weights/edge_sam_dyt.pth --out ft/ --epochs 30

  [dim]# two processes (torch.distributed: each takes half of every epoch's steps, gradients averaged)[/dim]
  torchrun --nproc_per_node 2 -m edgesam_cli finetune --data my_parts/ weights/edge_sam_dyt.pth --out ft/

  [dim]# a task prompt: the class "leaf" with no click (tokens + dense head; saved in ft/tasks.pt)[/dim]
  edgesam finetune --data my_parts/ ft/edge_sam_dyt_finetuned.pth --out ft/ --train prompt --task leaves --category leaf --task-dense --lr 1e-2

  [dim]# a box-proposal head for fast everything mode (ft/proposals.pt; --batch = images per step)[/dim]
  edgesam finetune --data my_parts/ weights/edge_sam_dyt.pth --out ft/ --train proposals --lr 1e-3 --epochs 20
  edgesam segment photos/ --everything --proposals ft/proposals.pt --checkpoint weights/edge_sam_dyt.pth

  [dim]# then: the same held-out images, before and after, with evaluate; export as usual[/dim]
  edgesam evaluate --checkpoint ft/edge_sam_dyt_finetuned.pth --data folder --data-root my_parts/
  edgesam export-onnx ft/edge_sam_dyt_finetuned.pth

Writes <out>/<checkpoint>_finetuned.pth (the best epoch by held-out mIoU; a plain state dict every command
loads), finetune_report.json, finetune_miou.png and finetune_state.pt (a rerun with the same options resumes
after the last finished epoch); --train prompt writes tasks.pt, --train proposals proposals.pt,
proposals_report.json and proposals_recall.png. Image embeddings are computed once and cached in <out>/embeddings
(float16, keyed by the image bytes and the encoder's weights).
"""


def command(
    checkpoint: CheckpointArg,
    data: Annotated[Path, typer.Option(
        "--data", exists=True, help="Mask folder (images/ + masks/), COCO instances .json, or a folder with "
                                    "annotations/instances_*.json.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Output folder.")],
    model: RecognisedVariantOpt = None,
    train: Annotated[str, typer.Option(
        "--train", help="What to train: decoder (the mask decoder), encoder+decoder (plus low-rank adapters on the "
                        "encoder's 1x1 convs, merged at the end; no embedding cache), prompt (a task prompt, "
                        "everything else frozen; needs --task) or proposals (a box-proposal head for segment "
                        "--everything --proposals, written to <out>/proposals.pt).")] = "decoder",
    lora_rank: Annotated[int, typer.Option(
        "--lora-rank", min=1, help="encoder+decoder: rank of the encoder's adapters.")] = 8,
    task: Annotated[str | None, typer.Option(
        "--task", help="--train prompt: the task's name in <out>/tasks.pt (segment --task NAME).")] = None,
    category: Annotated[str | None, typer.Option(
        "--category", help="--train prompt: the class the task segments (default: every object).")] = None,
    task_dense: Annotated[bool, typer.Option(
        "--task-dense", help="--train prompt: also learn a dense head (a 1x1 convolution of the image embedding "
                             "that tells the decoder where to look; 64k more numbers for full-size models).")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training images.")] = 10,
    batch: Annotated[int, typer.Option(
        "--batch", min=1, help="Objects per step (of one image); images per step with --train prompt or proposals.")
    ] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")] = 1e-4,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", min=0.01, max=0.9, help="Share of images held out (a seeded split by file).")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the prompts and the order.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", file_okay=False, help="Embedding cache (default <out>/embeddings).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue a run found in --out.")] = True,
    device: DeviceOpt = "cpu",
) -> None:
    """Fine-tune the mask decoder on your own images and masks; reports held-out mIoU before and after."""
    from edgesam_cli.console import RichProgress, out_console
    from edgesam_core.evaluation.samples import open_user_dataset
    from edgesam_core.merge import variant_for
    from edgesam_core.training.finetune import FinetuneOptions, finetune

    opts = FinetuneOptions(model_type=model or variant_for(checkpoint, "edge_sam_dyt"), train=train, epochs=epochs,
                           batch=batch, lr=lr, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir,
                           device=device, task=task, category=category, task_dense=task_dense,
                           lora_rank=lora_rank)
    dataset = open_user_dataset(data)
    with RichProgress() as progress:
        result = finetune(checkpoint, dataset, out, opts, progress=progress, resume=resume)
    before, best = result.before, result.best
    if train == "proposals":
        out_console.print(f"held-out box recall (IoU >= 0.5) {before['recall50']:.1f} -> {best['recall50']:.1f}, "
                          f"{best['proposals_per_image']:.0f} boxes per image (best epoch {result.best_epoch}); "
                          f"saved in {result.checkpoint}", highlight=False)
        out_console.print(f"use it: edgesam segment IMAGE --everything --proposals {result.checkpoint} "
                          f"--checkpoint {checkpoint}", highlight=False)
        return
    if train == "prompt":
        out_console.print(f"task {task!r}: held-out mIoU {before['task']:.1f} -> {best['task']:.1f} with no click "
                          f"(best epoch {result.best_epoch}); saved in {result.checkpoint}", highlight=False)
        out_console.print(f"use it: edgesam segment IMAGE --checkpoint {checkpoint} --task {task} --tasks "
                          f"{result.checkpoint}", highlight=False)
        return
    out_console.print(f"held-out mIoU box {before.get('box', 0):.1f} -> {best.get('box', 0):.1f}, point "
                      f"{before.get('point', 0):.1f} -> {best.get('point', 0):.1f} (best epoch {result.best_epoch}); "
                      f"{result.prompts_per_second:.0f} prompts/s", highlight=False)
    out_console.print(f"weights: {result.checkpoint}\nreport: {result.report}", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
