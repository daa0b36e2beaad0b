"""`edgesam build-trt`: build TensorRT engines for the encoder and decoder and check them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgesam_cli.options import CheckpointVariantOpt, ExportNameOpt, ExportOutDirOpt, ExportSourceArg, JsonResultOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# fp16 engines next to an exported pair: exports/edge_sam_dyt_{encoder,decoder}_fp16.engine (+ .json)[/dim]
  edgesam build-trt exports/edge_sam_dyt_encoder.onnx --precision fp16

  [dim]# from a checkpoint (exported to ONNX first), decoder profile for 1..32 points[/dim]
  edgesam build-trt weights/edge_sam_dyt.pth --max-points 32 --out engines/

  [dim]# TensorRT's own log while building[/dim]
  edgesam build-trt exports/edge_sam_dyt_decoder.onnx --verbose

TensorRT 10 uses the FP16 builder flag; TensorRT 11 (strongly typed only) gets an fp16 copy of the ONNX
graph (float32 inputs/outputs kept). Engines run only on the GPU model and TensorRT version that built them.
Exit codes: 0 ok; 1 parse/build failure (every parser error is listed); 2 bad options or input;
3 tensorrt or a CUDA GPU missing (pip install 'edgesam\\[trt]'); 4 engines written but outside --tolerance.
"""


def command(
    source: ExportSourceArg,
    model: CheckpointVariantOpt = None,
    out: ExportOutDirOpt = None,
    name: ExportNameOpt = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32 or fp16.")] = "fp32",
    min_points: Annotated[int, typer.Option("--min-points", min=1, help="Decoder profile: fewest points.")] = 1,
    opt_points: Annotated[int, typer.Option("--opt-points", min=1, help="Decoder profile: tuned-for points.")] = 5,
    max_points: Annotated[int, typer.Option("--max-points", min=1, help="Decoder profile: most points.")] = 16,
    workspace: Annotated[Optional[float], typer.Option(
        "--workspace", min=0.0, help="Builder workspace limit in GiB (default: TensorRT's).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(
        "--tolerance", min=0.0, help="Parity bound vs ONNX Runtime: max|diff| <= tol * max(1, max|ref|). "
                                     "Default fp32 5e-3, fp16 5e-2.")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare the engines with ONNX Runtime.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", help="TensorRT verbose log.")] = False,
    json_out: JsonResultOpt = False,
) -> None:
    """Build TensorRT engines (fp32 / fp16) for EdgeSAM-DyT and verify them against ONNX Runtime."""
    import json

    from edgesam_cli.console import RichProgress, out_console
    from edgesam_core.export.tensorrt import PointRange, build_trt

    points = PointRange(min_points, opt_points, max_points)
    with RichProgress() as progress:
        result = build_trt(source, out, variant=model, name=name, precision=precision, points=points,
                           workspace_gib=workspace, check_parity=check, tolerance=tolerance, verbose=verbose,
                           progress=progress)
    if json_out:
        payload = {"engines": {r: str(p) for r, p in result.engines.items()},
                   "sidecars": {r: str(p) for r, p in result.sidecars.items()}, "parity": result.parity}
        out_console.print_json(json.dumps(payload))
        return
    if result.parity:
        out_console.print(f"TensorRT vs ONNX Runtime: max |diff| {result.parity['max_abs']:.2e} "
                          f"(tolerance {result.parity['tolerance']:g})", highlight=False)
    for role, path in result.engines.items():
        out_console.print(f"{role:>8}: {path}  (+ {result.sidecars[role].name})", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
