"""`edgesam benchmark`: latency, throughput and peak memory per backend (encoder, decoder, end to end)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

EXAMPLES = """
[b]Examples[/b]

  [dim]# full-size EdgeSAM-DyT with random weights (fine for latency), PyTorch and ONNX, 2 CPU threads[/dim]
  edgesam benchmark --model edge_sam_dyt --backends torch,onnx --threads 2

  [dim]# your checkpoint, also as int8 ONNX calibrated on real images, 20 runs, JSON written to a file[/dim]
  edgesam benchmark --model edge_sam_dyt --checkpoint edge_sam_dyt.pth --backends torch,onnx,onnx-int8 --calib calib/ --runs 20 --out bench.json

  [dim]# an already exported pair on the GPU[/dim]
  edgesam benchmark --checkpoint out/edge_sam_dyt_encoder.onnx --backends onnx --device cuda

Stages: encoder = set_image (resize, normalise, pad, encoder); decoder = predict with one point
(prompt encoder, mask decoder, upscaling); end_to_end = both. Latency is the median and p90 of
--runs timed calls after --warmup untimed ones; memory is the peak RSS growth (CPU) or
torch.cuda.max_memory_allocated growth (PyTorch on CUDA) of one extra call. Backends that cannot
run here are listed as skipped, with the reason, in the JSON.
"""


def _table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    settings = report["settings"]
    table = Table(title=f"{settings['model']} on {settings['device']} ({settings['threads']} threads), "
                        f"median of {settings['runs']} runs", title_justify="left")
    for column in ("backend", "stage", "median ms", "p90 ms", "per s", "peak MiB"):
        table.add_column(column, justify="left" if column in ("backend", "stage") else "right")
    for backend, result in report["backends"].items():
        if result["status"] != "ok":
            table.add_row(backend, f"[yellow]{result['status']}[/yellow]: {result['reason']}", "", "", "", "")
            continue
        for stage in ("encoder", "decoder", "end_to_end"):
            stats = result[stage]
            peak = "-" if stats["peak_mem_mb"] is None else f"{stats['peak_mem_mb']:.1f}"
            table.add_row(backend, stage, f"{stats['median_ms']:.2f}", f"{stats['p90_ms']:.2f}",
                          f"{stats['throughput_per_s']:.2f}", peak)
    return table


#: Largest side of the synthetic benchmark image (a 16384x16384 RGB image is 0.8 GB).
MAX_IMAGE_SIDE = 16384


def command(
    model: Annotated[str, typer.Option(
        "--model", help="Model variant, e.g. edge_sam_dyt, edge_sam_dyt_hq, edge_sam, vit_b.")] = "edge_sam_dyt",
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", exists=True, dir_okay=False,
        help="Weights (.pth) or an exported NAME_encoder.onnx; default random weights (fine for latency).")] = None,
    backends: Annotated[str, typer.Option(
        "--backends", help="Comma-separated: torch, onnx, onnx-fp16, onnx-int8, executorch, executorch-int8.")] = "torch,onnx",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads (torch and onnxruntime).")] = 2,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per stage.")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed warm-up runs per stage.")] = 3,
    image_size: Annotated[str, typer.Option(
        "--image-size", metavar="WxH", help="Size of the synthetic input image.")] = "1024x768",
    calib: Annotated[Path | None, typer.Option(
        "--calib", exists=True, file_okay=False,
        help="Calibration images for onnx-int8 (default: synthetic noise, valid for latency only).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, help="Also write the JSON report to this file.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of a table.")] = False,
) -> None:
    """Measure latency (median, p90), throughput and peak memory of encoder, decoder and end-to-end segment."""
    import json

    from edgesam_cli.console import RichProgress, err_console, out_console
    from edgesam_core.benchmark import BACKENDS, BenchmarkSettings, run_benchmark
    from edgesam_core.errors import ConfigError
    from edgesam_core.evaluation.report import write_json

    try:
        width, height = (int(v) for v in image_size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size must look like 1024x768 (WxH), got {image_size!r}") from None
    if width < 1 or height < 1:
        raise ConfigError(f"--image-size must be positive, got {image_size!r}")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ConfigError(f"--image-size {image_size} is too large: at most {MAX_IMAGE_SIDE} pixels per side")
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        raise ConfigError(f"--backends {backends!r}: unknown or empty; choose from {', '.join(BACKENDS)}")
    settings = BenchmarkSettings(model=model, checkpoint=checkpoint, backends=names, device=device, threads=threads,
                                 runs=runs, warmup=warmup, image_hw=(height, width), calib_dir=calib)
    if checkpoint is None:
        err_console.print("No --checkpoint: using random weights (latency does not depend on weight values).")
    with RichProgress() as progress:
        report = run_benchmark(settings, progress=progress).to_dict()
    if out is not None:
        err_console.print(f"Wrote {write_json(report, out)}")
    if json_output:
        out_console.print_json(json.dumps(report))
    else:
        out_console.print(_table(report))
        for backend, result in report["backends"].items():
            for note in result.get("notes", []):
                err_console.print(f"[yellow]Note ({backend}):[/yellow] {note}", highlight=False)


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
