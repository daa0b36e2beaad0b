"""`edgesam segment`: promptable segmentation of an image or a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesam_cli.options import DecoderFromOpt, DeviceOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# one foreground click at x=500, y=375 (published EdgeSAM-DyT weights)[/dim]
  edgesam segment photo.jpg --point 500,375

  [dim]# a box plus a background click, your own checkpoint, results in out/[/dim]
  edgesam segment photo.jpg --box 120,80,640,470 --negative-point 300,200 --checkpoint edge_sam_dyt.pth --out out

  [dim]# every image of a folder, one mask per box, HQ model on the GPU[/dim]
  edgesam segment photos/ --box 0,0,200,200 --box 300,100,500,400 --hq --device cuda

  [dim]# segment everything (automatic mask generation)[/dim]
  edgesam segment photo.jpg --everything
  edgesam segment photo.jpg --everything --fast     [dim]# at most 80 decoder runs instead of 1,024[/dim]
  edgesam segment photos/ --everything --proposals boxes.json  [dim]# a detector's boxes: one run per box[/dim]
  edgesam segment photos/ --everything --proposals ft/proposals.pt  [dim]# boxes of a trained proposal head[/dim]

  [dim]# a big folder on 4 processes (each takes every 4th image), resumable after an interruption[/dim]
  torchrun --nproc_per_node 4 -m edgesam_cli segment photos/ --everything --out masks/ --resume

""" + (
    "Per image STEM the output folder gets STEM_mask<i>.png (0/255), STEM_overlay.png and STEM.json "
    "(COCO RLE, bbox XYWH, area, score per mask). Scores are stability scores (EdgeSAM's IoU head was "
    "not distilled). Without --multimask/--single-mask a click keeps the best of 4 masks and a box keeps "
    "one mask.\n"
)


def command(
    source: Annotated[Path, typer.Argument(
        metavar="IMAGE_OR_FOLDER", help="An image file, or a folder whose images are all segmented.")],
    point: Annotated[list[str] | None, typer.Option(
        "--point", metavar="X,Y", help="Point prompt in pixels (repeatable).")] = None,
    label: Annotated[list[int] | None, typer.Option(
        "--label", metavar="1|0", help="Label of each --point, in order: 1 foreground (default), 0 background.")
    ] = None,
    negative_point: Annotated[list[str] | None, typer.Option(
        "--negative-point", metavar="X,Y", help="Background point (repeatable); same as --point with --label 0.")
    ] = None,
    box: Annotated[list[str] | None, typer.Option(
        "--box", metavar="X0,Y0,X1,Y1", help="Box prompt (repeatable: one mask per box; points apply to each).")
    ] = None,
    everything: Annotated[bool, typer.Option(
        "--everything", help="Segment the whole image (automatic mask generator) instead of prompts.")] = False,
    fast: Annotated[bool, typer.Option(
        "--fast", help="With --everything: a 16x16 grid, coarse to fine, skipping points inside masks already "
        "found, at most 80 decoder runs (SAM's grid: 1,024); may miss small or nested objects.")] = False,
    proposals: Annotated[Path | None, typer.Option(
        "--proposals", dir_okay=False, help="With --everything: prompt with boxes instead of the point grid, one mask "
        "per box: a detector's as JSON ([[x0,y0,x1,y1], ...] for one image, {\"photo.jpg\": [[...], ...]} for a "
        "folder), or a proposal head trained by 'edgesam finetune --train proposals' (proposals.pt).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model variant, e.g. edge_sam_dyt, edge_sam_dyt_hq, edge_sam, vit_h; default: recognised "
        "from --checkpoint, else edge_sam_dyt (edge_sam_dyt_hq with --hq).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", dir_okay=False,
        help="Weights (.pth/.pt) or an exported model; default: the published weights of --model.")] = None,
    decoder_from: DecoderFromOpt = None,
    device: DeviceOpt = "cpu",
    multimask: Annotated[bool | None, typer.Option(
        "--multimask/--single-mask", help="Keep 3 candidate masks per prompt, or exactly one.")] = None,
    hq: Annotated[bool, typer.Option(
        "--hq", help="Use the HQ mask head (implies --model edge_sam_dyt_hq).")] = False,
    out: Annotated[Path, typer.Option(
        "--out", file_okay=False, help="Output folder (created).")] = Path("segment_out"),
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip images whose outputs of this same job (prompts, model) are already complete "
        "in --out.")] = False,
    task: Annotated[str | None, typer.Option(
        "--task", help="Segment by a learned task prompt, with no click ('edgesam finetune --train prompt').")] = None,
    tasks: Annotated[Path | None, typer.Option(
        "--tasks", exists=True, dir_okay=False, help="Tasks file of --task (default: tasks.pt beside --checkpoint).")
    ] = None,
) -> None:
    """Segment objects in images from point/box prompts (or everything) and save masks, overlay and JSON."""
    from rich.table import Table

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.errors import InputError
    from edgesam_core.inference.segment_job import (
        execute_plan,
        fetch_checkpoint,
        plan_segment,
        shard_from_env,
    )
    from edgesam_core.inference.segment_prompts import build_prompts
    from edgesam_core.merge import decoder_source_for

    prompts = build_prompts(point or [], label or [], negative_point or [], box or [], everything, fast, task,
                            proposals)
    plan = plan_segment(source, prompts, out, model=model, checkpoint=checkpoint, device=device, hq=hq,
                        multimask=multimask)
    plan.resume, plan.shard, plan.tasks = resume, shard_from_env(), tasks
    with RichProgress(transfer=True) as download:
        if plan.checkpoint is None:
            fetch_checkpoint(plan, download)
        plan.decoder_source = decoder_source_for(plan.checkpoint, decoder_from, download)
    if plan.is_folder:
        with RichProgress() as progress:
            report = execute_plan(plan, progress)
    else:
        report = execute_plan(plan)

    table = Table(title=f"Masks written to {report.out_dir}", title_justify="left")
    for column in ("image", "mask", "score", "area"):
        table.add_column(column, justify="right" if column in ("score", "area") else "left")
    for item in report.images:
        if item.error is not None:
            table.add_row(item.image.name, "[red]failed[/red]", "", "")
        if item.skipped:
            table.add_row(item.image.name, "[dim]complete earlier (--resume)[/dim]", "", "")
        for record in item.masks[:20]:
            table.add_row(item.image.name, record["file"], f"{record['score']:.3f}", f"{record['area']:,}")
        if len(item.masks) > 20:
            table.add_row(item.image.name, f"... {len(item.masks) - 20} more", "", "")
    out_console.print(table)
    if report.failed:
        for item in report.failed:
            err_console.print(f"[yellow]Skipped[/yellow] {item.image}: {item.error}", highlight=False)
        raise InputError(f"{len(report.failed)} of {len(report.images)} images could not be segmented (see above)")


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
