"""`edgesam export-executorch`: the encoder and decoder as ExecuTorch programs (XNNPACK), checked in ExecuTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgesam_cli.options import (
    CheckpointArg,
    CheckpointStemOpt,
    JsonResultOpt,
    MaxPointsOpt,
    OutBesideCheckpointOpt,
    RecognisedVariantOpt,
)

EXAMPLES = """
[b]Examples[/b]

  [dim]# fp32 pair beside the checkpoint: weights/edge_sam_dyt_{encoder,decoder}.pte (+ .pte.json sidecars)[/dim]
  edgesam export-executorch weights/edge_sam_dyt.pth

  [dim]# int8 encoder (PT2E, per-channel weights) calibrated on your photos; the images after the first[/dim]
  [dim]# --calib-count are held out to measure mask IoU against fp32 PyTorch[/dim]
  edgesam export-executorch weights/edge_sam_dyt.pth --int8 --calib photos/ --out pte/

  [dim]# run it: every command that takes a checkpoint takes the .pte too[/dim]
  edgesam segment photo.jpg --checkpoint pte/edge_sam_dyt_encoder_int8.pte --point 500,375

The decoder takes SAM's packed prompt (points, then the padding point or the box as two corner points
labelled 2/3) with up to --max-points points. Exit codes: 0 ok; 2 bad options or input; 3 executorch missing
(pip install 'edgesam\\[executorch]'); 4 a program is farther from the float64 model than fp32 noise allows,
or the int8 masks fall below --min-iou (nothing written under the final names).
"""


def _table(result: Any) -> Any:
    from rich.table import Table

    report = result.parity
    table = Table(title=f"ExecuTorch vs the float64 model (limit {report.noise_factor:g} x fp32 noise + "
                        f"{report.tolerance:g} x max(1, |ref|))")
    for col in ("graph", "prompt", "output", "max |diff|", "rms", "fp32 max", ""):
        table.add_column(col, justify="left" if col in ("graph", "prompt", "output") else "right")
    for e in report.entries:
        table.add_row(e.graph, e.case, e.output, f"{e.max_abs:.2e}", f"{e.rms:.2e}", f"{e.floor_max:.2e}",
                      "[green]ok[/green]" if report.ok(e) else "[red]FAIL[/red]")
    return table


def command(
    checkpoint: CheckpointArg,
    model: RecognisedVariantOpt = None,
    out: OutBesideCheckpointOpt = None,
    name: CheckpointStemOpt = None,
    int8: Annotated[bool, typer.Option("--int8", help="int8 encoder (needs --calib); the decoder stays fp32.")
                    ] = False,
    calib: Annotated[Path | None, typer.Option(
        "--calib", exists=True, file_okay=False, help="Folder of calibration images (sorted; the rest held out).")
    ] = None,
    calib_count: Annotated[int, typer.Option("--calib-count", min=1, help="Calibration images used.")] = 16,
    min_iou: Annotated[float, typer.Option(
        "--min-iou", min=0.0, max=1.0, help="int8: smallest accepted mean mask IoU against fp32 PyTorch.")] = 0.5,
    max_points: MaxPointsOpt = 16,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, help="Absolute term of the parity limit (as export-onnx).")] = 1e-5,
    threads: Annotated[int, typer.Option("--threads", min=1, help="XNNPACK threads for the checks.")] = 2,
    json_out: JsonResultOpt = False,
) -> None:
    """Export EdgeSAM(-DyT) to ExecuTorch (.pte, XNNPACK; fp32 or int8 encoder) and verify it in ExecuTorch."""
    import json

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.export.executorch_export import ExecutorchOptions, export_executorch

    opts = ExecutorchOptions(out_dir=out or checkpoint.parent, name=name, int8=int8, calib_dir=calib,
                             calib_count=calib_count, min_iou=min_iou, max_points=max_points,
                             tolerance=tolerance, threads=threads)
    with RichProgress() as progress:
        result = export_executorch(checkpoint, model, opts, progress=progress)
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/yellow] {note}", highlight=False)
    if json_out:
        payload = {"files": {k: str(v) for k, v in result.files.items()},
                   "sidecars": {k: str(v) for k, v in result.sidecars.items()},
                   "parity": result.parity.to_dict(), "int8": result.int8, "notes": result.notes}
        out_console.print_json(json.dumps(payload))
        return
    out_console.print(_table(result))
    if result.int8:
        iou, cos = result.int8["mask_iou"], result.int8["embedding_cosine"]
        out_console.print(f"int8 vs fp32 PyTorch on {result.int8['images']} held-out image(s): mask IoU point "
                          f"{iou['point']['mean']:.3f} (min {iou['point']['min']:.3f}), box {iou['box']['mean']:.3f} "
                          f"(min {iou['box']['min']:.3f}); embedding cosine {cos['mean']:.4f}", highlight=False)
    for role, path in result.files.items():
        out_console.print(f"{role:>8}: {path}  (+ {result.sidecars[role].name})", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
