"""`edgesam evaluate`: prompted mIoU on SA-1B or COCO, per click and per object size."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgesam_cli.options import DecoderFromOpt, DeviceOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# EdgeSAM's SA-1B protocol: first 1000 val images, <= 64 boxes each, 2 refinement clicks[/dim]
  edgesam evaluate --model edge_sam_dyt --checkpoint edge_sam_dyt.pth --data sa1b --data-root datasets/SA-1B --num-samples 1000

  [dim]# COCO val, centre-point prompts, 4 masks per click and the oracle choice[/dim]
  edgesam evaluate --checkpoint edge_sam_dyt.pth --data coco --data-root datasets/coco --prompt point-center --num-multimask-outputs 4 --multimask-select oracle

  [dim]# the exported ONNX pair, scored against the PyTorch teacher instead of the ground truth[/dim]
  edgesam evaluate --checkpoint out/edge_sam_dyt_encoder.onnx --reference sam_vit_h.pth --reference-model vit_h --data-root datasets/SA-1B

  [dim]# COCO AP with GT boxes as prompts: save masks, then score them with pycocotools[/dim]
  edgesam evaluate --checkpoint edge_sam_dyt.pth --data coco --data-root datasets/coco --refine-clicks 0 --save-masks

  [dim]# 4 processes, resumable: each rank evaluates every 4th image into out/images, the last writes the report[/dim]
  torchrun --nproc_per_node 4 -m edgesam_cli evaluate --checkpoint edge_sam_dyt.pth --data-root datasets/SA-1B --out out --resume

The output folder gets report.json, miou_vs_clicks.png and, with --save-masks, coco_gt.json plus
coco_results_click<k>.json (COCO RLE; load with COCO(gt).loadRes(results) and run COCOeval "segm").
Click 1 is the initial prompt alone; click k adds k-1 corrective points at the centre of the largest
error region. --protocol upstream reproduces EdgeSAM's eval_mIoU.py instead (GT resampled through the
model frame, clicks drawn at random from the low-res error region) for numbers comparable with upstream's.
"""


class Dataset(str, Enum):
    sa1b = "sa1b"
    coco = "coco"
    folder = "folder"


class PromptKind(str, Enum):
    box = "box"
    point_center = "point-center"
    point_random = "point-random"
    box_center = "box-center"
    point_annotated = "point-annotated"


class Protocol(str, Enum):
    exact = "exact"
    upstream = "upstream"


class Select(str, Enum):
    score = "score"
    area = "area"
    oracle = "oracle"


def command(
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", exists=True, dir_okay=False,
        help="Weights (.pth/.pt) or an exported artifact (e.g. NAME_encoder.onnx) opened by load_predictor.")],
    data_root: Annotated[Path, typer.Option(
        "--data-root", exists=True,
        help="Dataset root: SA-1B with images/<split> + annotations/<split>, or COCO with annotations/; with "
             "--data folder: your mask folder (images/ + masks/) or COCO instances .json.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Model variant of a .pth checkpoint (default edge_sam_dyt); ignored for artifacts.")] = None,
    decoder_from: DecoderFromOpt = None,
    data: Annotated[Dataset, typer.Option("--data", help="Dataset format.")] = Dataset.sa1b,
    split: Annotated[str, typer.Option("--split", help="Split name (val, train).")] = "val",
    prompt: Annotated[PromptKind, typer.Option("--prompt", help="Initial prompt per object.")] = PromptKind.box,
    refine_clicks: Annotated[int, typer.Option(
        "--refine-clicks", min=0, help="Corrective clicks after the initial prompt.")] = 2,
    num_samples: Annotated[int | None, typer.Option(
        "--num-samples", min=1, help="Evaluate the first N images (sorted order); default all.")] = None,
    max_prompts: Annotated[int, typer.Option(
        "--max-prompts", min=0, help="Objects per image (seeded subset beyond it; 0 = all).")] = 64,
    num_multimask_outputs: Annotated[int, typer.Option(
        "--num-multimask-outputs", min=1, max=4, help="Masks per prediction: 1, 3 or 4.")] = 1,
    multimask_select: Annotated[Select, typer.Option(
        "--multimask-select", help="Keep the mask with the best predicted score, the largest area, or the "
        "best IoU with the target (oracle).")] = Select.score,
    reference: Annotated[Path | None, typer.Option(
        "--reference", exists=True, dir_okay=False,
        help="Score agreement with this model's masks (e.g. the teacher) instead of the ground truth.")] = None,
    reference_model: Annotated[str | None, typer.Option(
        "--reference-model", help="Variant of the --reference checkpoint (e.g. vit_h).")] = None,
    device: DeviceOpt = "cpu",
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed for point-random, the object subset and upstream-protocol clicks.")] = 0,
    protocol: Annotated[Protocol, typer.Option(
        "--protocol", help="exact: exact GT, clicks at error-region centres; upstream: EdgeSAM's eval_mIoU.py "
        "(resampled GT, random clicks).")] = Protocol.exact,
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Output folder (created).")] = Path("eval_out"),
    save_masks: Annotated[bool, typer.Option(
        "--save-masks", help="Also write the kept masks as COCO RLE results (+ the matching GT subset).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    images: Annotated[Path | None, typer.Option(
        "--images", exists=True, dir_okay=False,
        help="Only these images: a file with one name per line, e.g. finetune's heldout_images.txt.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Reuse the per-image results of this same job in --out/images instead of evaluating those "
        "images again (under torchrun every rank writes its share there and the last to finish writes the report).")
    ] = False,
) -> None:
    """Evaluate prompted segmentation (mIoU x100 per click and per object size) on SA-1B or COCO."""
    import json

    from rich.table import Table

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.errors import ConfigError
    from edgesam_core.evaluation import evaluate, open_eval_dataset
    from edgesam_core.evaluation.image_results import ImageResults
    from edgesam_core.evaluation.report import CocoResultsWriter, plot_miou_vs_clicks, table_rows, write_json
    from edgesam_core.inference import load_predictor
    from edgesam_core.inference.segment_job import shard_from_env
    from edgesam_core.merge import decoder_source_for

    if num_multimask_outputs not in (1, 3, 4):
        raise ConfigError(f"--num-multimask-outputs must be 1, 3 or 4, got {num_multimask_outputs}")
    if reference_model and reference is None:
        raise ConfigError("--reference-model needs --reference CHECKPOINT")
    rank, world = shard_from_env()
    if save_masks and (resume or world > 1):
        raise ConfigError("--save-masks writes its results files from one whole run: drop --resume and torchrun, "
                          "or --save-masks")

    dataset = open_eval_dataset(data.value, data_root, split, None if images else num_samples,
                                order="upstream" if protocol.value == "upstream" else "sorted")
    if images is not None:
        from edgesam_core.evaluation.samples import KeptImages, read_image_list

        dataset = KeptImages(dataset, read_image_list(images))
    err_console.print(f"Loading {checkpoint.name} ...")
    with RichProgress(transfer=True) as download:
        decoder_source = decoder_source_for(checkpoint, decoder_from, download)
    options = {"decoder_source": decoder_source} if decoder_source is not None else {}
    predictor = load_predictor(checkpoint, model=model, device=device, **options)
    reference_predictor = None
    if reference is not None:
        reference_predictor = load_predictor(reference, model=reference_model, device=device)
    writer = CocoResultsWriter() if save_masks else None
    job = {"checkpoint": str(checkpoint), "model": model, "data": data.value, "data_root": str(data_root),
           "split": split, "reference": str(reference) if reference else None, "reference_model": reference_model,
           "device": device}
    settings = {"prompt": prompt.value, "refine_clicks": refine_clicks, "max_prompts": max_prompts,
                "num_multimask_outputs": num_multimask_outputs, "multimask_select": multimask_select.value,
                "seed": seed, "protocol": protocol.value}
    results = ImageResults(out / "images", {**job, **settings}) if resume or world > 1 else None
    with RichProgress() as progress:
        report = evaluate(predictor, dataset, prompt=prompt.value, refine_clicks=refine_clicks,
                          num_samples=num_samples, reference_predictor=reference_predictor, progress=progress,
                          max_prompts=max_prompts, num_multimask_outputs=num_multimask_outputs,
                          multimask_select=multimask_select.value, seed=seed, on_mask=writer,
                          protocol=protocol.value, results=results, resume=resume, shard=(rank, world))
    report.settings.update(job)
    if report.missing_images:
        err_console.print(f"Shard {rank + 1}/{world}: {report.computed_images} images evaluated into {out / 'images'} "
                          f"({report.images_per_second:.2f} images/s); {report.missing_images} images of other "
                          "shards are not finished yet: the last shard to finish writes the report.")
        return
    out.mkdir(parents=True, exist_ok=True)
    summary = report.to_dict()
    files = [write_json(summary, out / "report.json"), plot_miou_vs_clicks(report, out / "miou_vs_clicks.png")]
    if writer is not None:
        files += writer.write(out)

    if json_output:
        out_console.print_json(json.dumps(summary))
    else:
        target = "reference masks" if reference else "ground truth"
        table = Table(title=f"mIoU vs {target}: {data.value}/{split}, {prompt.value} prompt, "
                            f"{report.num_images} images, {report.num_prompts} prompts",
                      title_justify="left")
        columns, rows = table_rows(report)
        for column in columns:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        out_console.print(table)
    if report.skipped_empty:
        err_console.print(f"{report.skipped_empty} objects with an empty mask were skipped.")
    err_console.print("Wrote " + ", ".join(str(f) for f in files))


command.__doc__ = (command.__doc__ or "") + "\n\n" + EXAMPLES
