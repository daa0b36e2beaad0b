"""`edgesam export-coreml`: the encoder and decoder as Core ML ML Programs (.mlpackage)."""

from __future__ import annotations

from typing import Annotated

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

  [dim]# fp16 pair beside the checkpoint: weights/edge_sam_dyt_{encoder,decoder}_fp16.mlpackage[/dim]
  edgesam export-coreml weights/edge_sam_dyt.pth

  [dim]# int8 weights (linear symmetric), fp32 compute, into coreml/[/dim]
  edgesam export-coreml weights/edge_sam_dyt.pth --w8 --precision fp32 --out coreml/

Inputs and outputs are float32: the encoder takes image [1,3,1024,1024]; the decoder takes SAM's packed
prompt point_coords [1,N,2] / point_labels [1,N] (box = two corner points labelled 2/3, no box = a padding
point labelled -1 at the end), N up to --max-points. Conversion runs on Linux; running the packages needs
macOS. Exit codes: 0 ok; 2 bad options or input; 3 coremltools missing (pip install 'edgesam\\[coreml]').
"""


def command(
    checkpoint: CheckpointArg,
    model: RecognisedVariantOpt = None,
    out: OutBesideCheckpointOpt = None,
    name: CheckpointStemOpt = None,
    precision: Annotated[str, typer.Option("--precision", help="Compute precision: fp16 (default) or fp32.")
                         ] = "fp16",
    w8: Annotated[bool, typer.Option("--w8", help="Store weights as int8 (linear symmetric, per channel).")
                  ] = False,
    max_points: MaxPointsOpt = 16,
    json_out: JsonResultOpt = False,
) -> None:
    """Convert EdgeSAM(-DyT) to Core ML (.mlpackage encoder and decoder) with coremltools."""
    import json

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.export.coreml_export import CoremlOptions, export_coreml

    opts = CoremlOptions(out_dir=out or checkpoint.parent, name=name, precision=precision, w8=w8,
                         max_points=max_points)
    with RichProgress() as progress:
        result = export_coreml(checkpoint, model, opts, progress=progress)
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/yellow] {note}", highlight=False)
    if json_out:
        out_console.print_json(json.dumps({"files": {k: str(v) for k, v in result.files.items()},
                                           "sidecars": {k: str(v) for k, v in result.sidecars.items()},
                                           "notes": result.notes}))
        return
    for role, path in result.files.items():
        out_console.print(f"{role:>8}: {path}  (+ {result.sidecars[role].name})", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
