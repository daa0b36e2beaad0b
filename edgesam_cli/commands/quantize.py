"""`edgesam quantize`: int8 ONNX (static, QDQ, per-channel) with a fidelity and latency report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

EXAMPLES = """
[b]Examples[/b]

  [dim]# quantise an exported pair: writes weights/edge_sam_dyt_int8_{encoder,decoder}.onnx + _int8_report.json[/dim]
  edgesam quantize weights/edge_sam_dyt_encoder.onnx --calib calib_images/

  [dim]# from a checkpoint (exported to fp32 ONNX first), held-out images in their own folder[/dim]
  edgesam quantize weights/edge_sam_dyt.pth --calib calib/ --eval val/ --out exports

  [dim]# the result loads like any other artifact[/dim]
  edgesam segment photo.jpg --checkpoint weights/edge_sam_dyt_int8_encoder.onnx --point 500,375

Without --eval, the last quarter of the --calib images (sorted by name) is held out for the report.
"""


def _table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="int8 vs fp32")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lat = report["latency_ms"]
    rows = [
        ("calibration / held-out images", f"{report['calib_images']} / {report['eval_images']}"),
        ("embedding cosine (mean / min)", f"{report['embedding_cosine_mean']:.4f} / {report['embedding_cosine_min']:.4f}"),
        ("mask IoU, point (mean / min)", f"{report['mask_iou_point_mean']:.4f} / {report['mask_iou_point_min']:.4f}"),
        ("mask IoU, box (mean / min)", f"{report['mask_iou_box_mean']:.4f} / {report['mask_iou_box_min']:.4f}"),
        ("mask IoU, int8 encoder + fp32 decoder", f"{report['mask_iou_int8_encoder_only_mean']:.4f}"),
        (f"encoder ms, fp32 / int8 ({report['threads']} threads)",
         f"{lat['encoder_fp32']:.1f} / {lat['encoder_int8']:.1f}"),
        ("decoder ms, fp32 / int8", f"{lat['decoder_fp32']:.2f} / {lat['decoder_int8']:.2f}"),
        ("encoder GELU", report.get("gelu", "")),
    ]
    for graph in ("encoder", "decoder"):
        entries = [e for e in report.get("parity", {}).get("entries", []) if e["graph"] == graph]
        if entries:
            rows.append((f"{graph}: worst distance from float64 / int8 noise limit",
                         f"{max(e['excess'] for e in entries):.2f}x"))
    for name, size in report["size_bytes"].items():
        rows.append((f"size {name}", f"{size / 1e6:.2f} MB"))
    for row in rows:
        table.add_row(*row)
    return table


def command(
    source: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="X_encoder.onnx (X_decoder.onnx beside it) or a PyTorch checkpoint.")],
    calib: Annotated[Path, typer.Option(
        "--calib", exists=True, file_okay=False, help="Folder of calibration images.")],
    eval_dir: Annotated[Path | None, typer.Option(
        "--eval", exists=True, file_okay=False, help="Held-out images for the report (default: split of --calib).")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Output folder (default: beside the source).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Variant of a checkpoint source; default edge_sam_dyt (edge_sam_dyt_hq with --hq).")] = None,
    hq: Annotated[bool, typer.Option("--hq", help="Checkpoint source is an HQ model.")] = False,
    max_calib: Annotated[int, typer.Option("--max-calib", min=1, help="Calibration images used at most.")] = 32,
    max_eval: Annotated[int, typer.Option("--max-eval", min=1, help="Held-out images used at most.")] = 16,
    threads: Annotated[int, typer.Option("--threads", min=1, help="onnxruntime threads for the timings.")] = 2,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per graph (median reported).")] = 10,
    per_channel: Annotated[bool, typer.Option(
        "--per-channel/--per-tensor", help="Per-channel (default) or per-tensor int8 weights.")] = True,
    exact_gelu: Annotated[bool, typer.Option(
        "--exact-gelu", help="Keep the encoder's GELUs exact, in float32 (slower); default: x*sigmoid(1.702x) "
                             "on uint8 tables, within 0.021 of GELU.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Quantise the ONNX encoder and decoder to int8 and report fidelity and speed against fp32."""
    import json

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.errors import ConfigError
    from edgesam_core.export.quantize import QuantizeOptions, quantize_pair, report_path, split_images
    from edgesam_core.export.sidecar import atomic_write_json

    encoder = source
    opts = QuantizeOptions(calib_dir=calib, eval_dir=eval_dir, max_calib=max_calib, max_eval=max_eval,
                           out_dir=out, per_channel=per_channel, threads=threads, latency_runs=runs,
                           exact_gelu=exact_gelu)
    split_images(opts)  # bad image folders are refused before any export
    with RichProgress() as progress:
        if source.suffix.lower() in (".pth", ".pt"):
            from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

            model_type = model or ("edge_sam_dyt_hq" if hq else "edge_sam_dyt")
            result = export_onnx(source, OnnxExportOptions(model_type=model_type, out_dir=out), progress=progress)
            encoder = result.files["encoder"]
        elif not source.name.endswith("_encoder.onnx"):
            raise ConfigError(f"{source.name}: give a checkpoint (.pth/.pt) or an encoder named '<name>_encoder.onnx'")
        report = quantize_pair(encoder, opts, progress=progress)
    payload = report.to_dict()
    path = atomic_write_json(report_path(report.int8_encoder), payload)
    for note in report.notes:
        err_console.print(f"[yellow]Note:[/yellow] {note}", highlight=False)
    if json_out:
        out_console.print_json(json.dumps(payload))
    else:
        out_console.print(_table(payload))
        out_console.print(f"int8 encoder: {report.int8_encoder}\nint8 decoder: {report.int8_decoder}\n"
                          f"report: {path}", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
