"""`edgesam export-web`: a static site that runs the model in the visitor's browser (onnxruntime-web)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesam_cli.options import CheckpointArg, JsonResultOpt, RecognisedVariantOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# build the site (ONNX pair checked against the float64 model, onnxruntime-web from npm), then serve it[/dim]
  edgesam export-web weights/edge_sam_dyt.pth --out site
  edgesam demo --client-side site

  [dim]# int8 encoder calibrated on your photos (about 4x smaller download), WASM only[/dim]
  edgesam export-web weights/edge_sam_dyt.pth --out site-int8 --int8 --calib photos/ --no-webgpu

The folder is self-contained: any static file server can host it (serve it with the headers in its _headers
file so WASM runs multi-threaded). onnxruntime-web is fetched once from the npm registry, pinned and checked
against the registry's integrity hash, and cached in ~/.cache/edgesam/npm ($EDGESAM_NPM_REGISTRY for a
mirror, --ort-web for a local tarball). Exit codes: 0 ok; 2 bad options or input (an existing --out, a
tarball that is not the pinned package, int8 below --min-iou); 3 onnx/onnxruntime missing; 4 the ONNX graphs
are farther from the float64 model than fp32 noise allows (no site written).
"""


def command(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder to create (new or empty).")],
    model: RecognisedVariantOpt = None,
    webgpu: Annotated[bool, typer.Option(
        "--webgpu/--no-webgpu", help="Also ship onnxruntime-web's WebGPU build (+29 MB); the page uses it where "
                                     "the browser has WebGPU, WASM otherwise.")] = True,
    int8: Annotated[bool, typer.Option("--int8", help="int8 encoder (needs --calib); the decoder stays fp32.")
                    ] = False,
    calib: Annotated[Path | None, typer.Option(
        "--calib", exists=True, file_okay=False, help="Folder of calibration photos (a quarter held out).")] = None,
    min_iou: Annotated[float, typer.Option(
        "--min-iou", min=0.0, max=1.0, help="int8: smallest accepted mean mask IoU against fp32.")] = 0.9,
    ort_web: Annotated[str | None, typer.Option(
        "--ort-web", help=".tgz file or URL of onnxruntime-web (checked against the pinned integrity hash); "
                          "default: the npm registry.")] = None,
    json_out: JsonResultOpt = False,
) -> None:
    """Build a static web page that segments with the model in the browser (encoder and decoder client-side)."""
    import json

    from edgesam_cli.console import RichProgress, out_console
    from edgesam_core.export.web_export import WebExportOptions, export_web
    from edgesam_core.merge import variant_for

    opts = WebExportOptions(model_type=model or variant_for(checkpoint, "edge_sam_dyt"), webgpu=webgpu, int8=int8,
                            calib_dir=calib, min_iou=min_iou, ort_source=ort_web)
    with RichProgress(transfer=True) as progress:
        result = export_web(checkpoint, out, opts, progress=progress)
    manifest = result.manifest
    if json_out:
        out_console.print_json(json.dumps({"site": str(result.site), "manifest": manifest,
                                           "parity": result.parity.to_dict(), "notes": result.notes}))
        return
    size = sum((result.site / f).stat().st_size for f in manifest["files"]) / 1e6
    out_console.print(f"Site for {manifest['model']} in {result.site} ({size:.0f} MB; onnxruntime-web "
                      f"{manifest['ort_web']['version']}; ONNX parity with the float64 model passed)", highlight=False)
    if result.int8:
        out_console.print(f"int8 encoder: mask IoU {result.int8['mask_iou_vs_fp32']:.3f} against fp32 on held-out "
                          "photos", highlight=False)
    out_console.print(f"Serve it: edgesam demo --client-side {result.site}", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
