"""`edgesam convert-tflite`: convert the ONNX pair (or a checkpoint) to TFLite and check it in LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgesam_cli.options import CheckpointVariantOpt, ExportNameOpt, ExportOutDirOpt, ExportSourceArg, JsonResultOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# float32 + float16 from an exported pair: exports/edge_sam_dyt_{encoder,decoder}_{fp32,fp16}.tflite[/dim]
  edgesam convert-tflite exports/edge_sam_dyt_encoder.onnx

  [dim]# straight from a checkpoint (exported to a portable ONNX pair first, bilinear neck), int8 calibrated on photos[/dim]
  edgesam convert-tflite weights/edge_sam_dyt.pth --precision int8 --calib photos/ --out tflite/

  [dim]# room for a box plus three clicks in one prompt[/dim]
  edgesam convert-tflite exports/edge_sam_dyt_encoder.onnx --num-points 5

The decoder is converted with a fixed prompt layout of --num-points points: a box counts as two points
(labels 2/3) and shorter prompts are padded with label -1 (SAM's padding label).
Exit codes: 0 ok; 1 conversion failed; 2 bad options or input; 3 tensorflow/onnx2tf missing
(pip install 'edgesam\\[tflite]'); 4 files written but fp32/fp16 differ from ONNX Runtime beyond --tolerance.
"""


def _table(result: Any) -> Any:
    from rich.table import Table

    table = Table(title="TFLite (LiteRT) vs ONNX Runtime")
    for col in ("precision", "graph", "max |diff|", "mean |diff|", "latency ms", ""):
        table.add_column(col, justify="left" if col in ("precision", "graph", "") else "right")
    for precision, report in result.parity.items():
        for graph in ("encoder", "decoder"):
            entries = [e for e in report["entries"] if e["graph"] == graph]
            if not entries:
                continue
            worst = max(entries, key=lambda e: e["max_abs"])
            mean = sum(e["mean_abs"] for e in entries) / len(entries)
            status = all(e["passed"] for e in entries) if report["gated"] else None
            label = "[dim]reported[/dim]" if status is None else ("[green]ok[/green]" if status else "[red]FAIL[/red]")
            table.add_row(precision, graph, f"{worst['max_abs']:.2e}", f"{mean:.2e}",
                          f"{result.latency_ms.get(precision, {}).get(graph, float('nan')):.1f}", label)
    return table


def command(
    source: ExportSourceArg,
    model: CheckpointVariantOpt = None,
    out: ExportOutDirOpt = None,
    name: ExportNameOpt = None,
    precision: Annotated[Optional[list[str]], typer.Option(
        "--precision", help="fp32, fp16 and/or int8 (repeat the option); default fp32 and fp16.")] = None,
    num_points: Annotated[int, typer.Option(
        "--num-points", min=1, help="Static number of decoder points (a box counts as 2).")] = 3,
    calib: Annotated[Optional[Path], typer.Option(
        "--calib", exists=True, file_okay=False, help="Folder of calibration images (needed for int8).")] = None,
    calib_count: Annotated[int, typer.Option("--calib-count", min=1, help="Calibration images used (sorted).")] = 32,
    upsample_mode: Annotated[str, typer.Option(
        "--upsample-mode", help="Neck upsampling when exporting a checkpoint: bilinear (LiteRT has no builtin "
                                "bicubic; bicubic ONNX graphs are switched to bilinear and the change noted). Give "
                                "a checkpoint or an 'export-onnx --portable' pair: onnx2tf mistranslates the "
                                "default (ONNX Runtime tuned) encoder graph.")
    ] = "bilinear",
    tolerance: Annotated[Optional[float], typer.Option(
        "--tolerance", min=0.0, help="Parity bound: max|diff| <= tol * max(1, max|ref|). Default fp32 5e-3, "
                                     "fp16 5e-2; int8 is only reported unless this is given.")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Run the LiteRT vs ONNX Runtime check.")] = True,
    json_out: JsonResultOpt = False,
) -> None:
    """Convert EdgeSAM-DyT to TFLite (fp32 / fp16 / int8) with onnx2tf and verify it in LiteRT."""
    import json

    from edgesam_cli.console import RichProgress, out_console
    from edgesam_core.export.tflite import TfliteOptions, convert_tflite

    options = TfliteOptions(precisions=tuple(precision or ("fp32", "fp16")), num_points=num_points,
                            calib_dir=calib, calib_count=calib_count, tolerance=tolerance,
                            upsample_mode=upsample_mode, check_parity=check)
    with RichProgress() as progress:
        result = convert_tflite(source, out, variant=model, name=name, options=options, progress=progress)
    if json_out:
        payload = {"files": {p: {r: str(f) for r, f in fs.items()} for p, fs in result.files.items()},
                   "sidecars": {p: {r: str(f) for r, f in fs.items()} for p, fs in result.sidecars.items()},
                   "parity": result.parity, "latency_ms": result.latency_ms}
        out_console.print_json(json.dumps(payload))
        return
    if result.parity:
        out_console.print(_table(result))
    for precision_name, files in result.files.items():
        for role, path in files.items():
            out_console.print(f"{precision_name:>5} {role:>8}: {path}", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
