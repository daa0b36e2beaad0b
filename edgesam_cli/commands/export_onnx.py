"""`edgesam export-onnx`: export the encoder and prompt decoder to ONNX and check them against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgesam_cli.options import DecoderFromOpt, JsonResultOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# encoder + decoder next to the checkpoint: weights/edge_sam_dyt_{encoder,decoder}.onnx (+ .json),[/dim]
  [dim]# plus the staged decoder the ONNX predictor runs: _decoder_image.onnx (per image), _decoder_prompts.onnx[/dim]
  edgesam export-onnx weights/edge_sam_dyt.pth

  [dim]# HQ model, decoder masks upsampled to 1024x1024, into exports/[/dim]
  edgesam export-onnx weights/edge_sam_dyt_hq.pth --hq --upsample --out exports

  [dim]# a learned task prompt built into its own decoder: image in, the task's mask out, no click[/dim]
  edgesam export-onnx weights/edge_sam_dyt.pth --task leaves --tasks ft/tasks.pt

  [dim]# upstream's bilinear encoder upsampling and a batched-box decoder graph as well[/dim]
  edgesam export-onnx weights/edge_sam_dyt.pth --upsample-mode bilinear --multi-box

Exit codes: 0 ok (an onnxsim failure without an explicit --simplify only warns); 1 explicit --simplify
failed (unsimplified files kept); 3 onnx/onnxruntime (or onnxsim with --simplify) missing; 4 files written
but ONNX is farther from the float64 model than fp32 noise allows (files kept: see the parity table and sidecar).
Graphs appear under their final names only after they were checked.
"""


def _parity_table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"ONNX vs the float64 model (limit {report.noise_factor:g} x fp32 noise + "
                        f"{report.tolerance:g} x max(1, |ref|))")
    for col in ("graph", "prompt", "output", "max |diff|", "rms", "fp32 max", "fp32 rms", "max |ref|", ""):
        table.add_column(col, justify="left" if col in ("graph", "prompt", "output") else "right",
                         overflow="fold")
    for e in report.entries:
        ok = report.ok(e)
        table.add_row(e.graph, e.case, e.output, f"{e.max_abs:.2e}", f"{e.rms:.2e}", f"{e.floor_max:.2e}",
                      f"{e.floor_rms:.2e}", f"{e.ref_abs_max:.3g}", "[green]ok[/green]" if ok else "[red]FAIL[/red]")
    return table


def command(
    checkpoint: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="PyTorch checkpoint (.pth/.pt).")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Variant; default edge_sam_dyt, or edge_sam_dyt_hq with --hq.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Output folder (default: beside the checkpoint).")] = None,
    opset: Annotated[int, typer.Option(
        "--opset", min=13, max=23,
        help="ONNX opset: 20 exports tanh-GELU as one Gelu node (~1.5x faster in ONNX Runtime); 17 is upstream's.")
    ] = 20,
    upsample_mode: Annotated[str, typer.Option(
        "--upsample-mode",
        help="Encoder stage-3 upsampling: bicubic (what training and PyTorch inference use) or bilinear "
             "(what upstream's export script silently switched to).")] = "bicubic",
    simplify: Annotated[bool | None, typer.Option(
        "--simplify/--no-simplify",
        help="Run onnxsim. Default: when installed; a failure warns and keeps the unsimplified graph (exit 0). "
             "An explicit --simplify makes a missing onnxsim (exit 3) or a failure (exit 1, files kept) an error.")
    ] = None,
    hq: Annotated[bool, typer.Option("--hq", help="HQ model: encoder also outputs interm_embeddings_0..2.")] = False,
    upsample: Annotated[bool, typer.Option(
        "--upsample", help="Decoder masks bilinearly upsampled to the model input (1024x1024) instead of 256x256.")
    ] = False,
    encoder_only: Annotated[bool, typer.Option("--encoder-only", help="Export only the encoder.")] = False,
    decoder_only: Annotated[bool, typer.Option("--decoder-only", help="Export only the decoder(s).")] = False,
    multi_box: Annotated[bool, typer.Option(
        "--multi-box", help="Also write <name>_decoder_multibox.onnx: boxes [N,4] -> scores [N,4], masks [N,4,h,w] "
                            "in one call (points shared by all boxes or absent).")] = False,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0,
        help="Absolute term of the parity limit, x max(1, max|ref|), added to 3x the fp32 noise floor (how far "
             "fp32 PyTorch is from the float64 model on the same input).")
    ] = 1e-5,
    fuse: Annotated[bool, typer.Option(
        "--fuse/--no-fuse", help="Fold BatchNorms and RepVGG branches into single convs before export "
                                 "(same outputs, smaller and faster graphs, better int8).")] = True,
    portable: Annotated[bool, typer.Option(
        "--portable", help="Graphs for other converters (onnx2tf, TensorRT): opset 17, none of the ONNX Runtime "
                           "specific rewrites (matrix-product upsampling, expanded SE gates, channels-first "
                           "decoder) and no staged decoder.")] = False,
    decoder_from: DecoderFromOpt = None,
    task: Annotated[str | None, typer.Option(
        "--task", help="Also write <name>_task_<TASK>_decoder.onnx: a learned task prompt built in "
                       "(image_embeddings -> scores, masks), so encoder + it segment the task with no prompt.")
    ] = None,
    tasks: Annotated[Path | None, typer.Option(
        "--tasks", exists=True, dir_okay=False, help="Tasks file of --task (default: tasks.pt beside the checkpoint).")
    ] = None,
    json_out: JsonResultOpt = False,
) -> None:
    """Export EdgeSAM-DyT to ONNX (upstream's I/O contract, PyTorch's prompt semantics) and verify it."""
    import json

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.errors import ConfigError, EdgeSamError
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.merge import decoder_source_for, variant_for

    if encoder_only and decoder_only:
        raise ConfigError("--encoder-only and --decoder-only exclude each other: pass at most one")
    model_type = model or ("edge_sam_dyt_hq" if hq else variant_for(checkpoint, "edge_sam_dyt"))
    if hq and "hq" not in model_type:
        raise ConfigError(f"--hq needs an HQ variant but --model is '{model_type}': drop --hq or use edge_sam_dyt_hq")
    opts = OnnxExportOptions(model_type=model_type, out_dir=out, opset=opset, upsample_mode=upsample_mode,
                             simplify=simplify, upsample=upsample, encoder=not decoder_only,
                             decoder=not encoder_only, multi_box=multi_box, tolerance=tolerance,
                             fuse=fuse, runtime_rewrites=not portable)
    if portable:
        opts.opset = 17
    failure: EdgeSamError | None = None
    with RichProgress(transfer=True) as download:
        decoder_source = decoder_source_for(checkpoint, decoder_from, download)
    with RichProgress() as progress:
        try:
            result = export_onnx(checkpoint, opts, progress=progress, decoder_source=decoder_source)
        except EdgeSamError as exc:  # parity (exit 4) or explicit --simplify failure (exit 1): files exist
            failure, result = exc, getattr(exc, "result", None)
            if result is None:
                raise
    if task is not None and failure is None:
        from edgesam_core.export.task_export import export_task

        try:
            task_result = export_task(checkpoint, model_type, task, tasks, out, opts.opset, tolerance)
        except EdgeSamError as exc:
            failure = exc
        else:
            result.files[f"task_{task}"] = task_result.path
            result.sidecars[f"task_{task}"] = task_result.sidecar
            result.parity.entries.extend(task_result.parity.entries)
    for note in result.notes:
        err_console.print(f"[yellow]Warning:[/yellow] {note}", highlight=False)
    if json_out:
        payload = {"files": {k: str(v) for k, v in result.files.items()},
                   "sidecars": {k: str(v) for k, v in result.sidecars.items()},
                   "parity": result.parity.to_dict(), "notes": result.notes}
        out_console.print_json(json.dumps(payload))
    else:
        out_console.print(_parity_table(result.parity))
        for role, path in result.files.items():
            out_console.print(f"{role:>16}: {path}  (+ {result.sidecars[role].name})", highlight=False)
    if failure is not None:
        raise failure


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
